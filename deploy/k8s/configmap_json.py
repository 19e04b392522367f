#!/usr/bin/env python3
"""Prints the herd config (data["herd.json"]) of the ConfigMap in configmap.yaml, checked to be
JSON. Usage: configmap_json.py [configmap.yaml]"""
import json
import os
import sys

import yaml

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "configmap.yaml")
with open(path, encoding="utf-8") as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
maps = [d for d in docs if d.get("kind") == "ConfigMap" and "herd.json" in d.get("data", {})]
if len(maps) != 1:
    sys.exit(f"{path}: expected one ConfigMap with a herd.json key, found {len(maps)}")
text = maps[0]["data"]["herd.json"]
json.loads(text)
sys.stdout.write(text)
