#!/usr/bin/env python3
"""Helpers for bench/run.sh: free ports, temp configs, the stats endpoints, convergence
waits, hop counts, the start-up timer, request files, and the results table.

Every wait here is bounded in time; nothing here starts a process that outlives it.
"""

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time


def free_ports(n):
    """n distinct loopback ports that were free a moment ago, below the ephemeral range
    (so they do not collide with outgoing connections)."""
    ports = []
    tries = 0
    while len(ports) < n:
        tries += 1
        if tries > 20000:
            raise SystemExit("bench: no free loopback ports found")
        p = random.randrange(20000, 32000)
        if p in ports:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            s.close()
        ports.append(p)
    return ports


def cmd_ports(args):
    print(" ".join(str(p) for p in free_ports(int(args[0]))))


def cmd_config(args):
    """config OUT default DEPLOY_JSON | config OUT single NAME [TLS_DIR]: a herd config on
    fresh ports, each server with a stats address; with TLS_DIR (made by herd-cli certs),
    TLS on every peer link."""
    out, kind = args[0], args[1]
    tls_dir = args[3] if len(args) > 3 and args[3] else None
    if kind == "default":
        with open(args[2]) as f:
            base = json.load(f)
        names = list(base["servers"])
        links = base["links"]
    else:
        names = [args[2]]
        links = []
    ports = free_ports(2 * len(names))
    servers = {
        n: {"addr": f"127.0.0.1:{ports[2 * i]}", "stats": f"127.0.0.1:{ports[2 * i + 1]}"}
        for i, n in enumerate(names)
    }
    config = {"servers": servers, "links": links}
    if tls_dir:
        config["tls"] = {"ca": f"{tls_dir}/ca.pem", "cert": f"{tls_dir}/{{name}}.pem",
                         "key": f"{tls_dir}/{{name}}.key"}
    with open(out, "w") as f:
        json.dump(config, f)


def load_config(path):
    with open(path) as f:
        return json.load(f)


def addr_of(entry, key):
    host, port = entry[key].rsplit(":", 1)
    return host, int(port)


def read_stats(cfg):
    """{name: stats} from every server's stats address (one JSON line per connection)."""
    out = {}
    for name, entry in cfg["servers"].items():
        with socket.create_connection(addr_of(entry, "stats"), timeout=5) as s:
            buf = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        out[name] = json.loads(buf.decode())
    return out


def cmd_stats(args):
    print(json.dumps(read_stats(load_config(args[0]))))


def cmd_wait_quiet(args):
    """wait-quiet CONFIG TIMEOUT_S: poll the stats until nothing changes for two polls
    and report whether every server holds the same records (count and digest)."""
    cfg = load_config(args[0])
    timeout = float(args[1])
    t0 = time.monotonic()
    prev = None
    quiet = False
    stats = {}
    while time.monotonic() - t0 < timeout:
        stats = read_stats(cfg)
        snap = {n: (s["records"], s["digest"], s["updates_received"], s["stored"])
                for n, s in stats.items()}
        if snap == prev:
            quiet = True
            break
        prev = snap
        time.sleep(0.3)
    records = {n: s["records"] for n, s in stats.items()}
    digests = {n: s["digest"] for n, s in stats.items()}
    converged = len(set(records.values())) == 1 and len(set(digests.values())) == 1
    print(json.dumps({"quiet": quiet, "converged": converged,
                      "waited_s": round(time.monotonic() - t0, 2),
                      "records": records, "digests": digests, "stats": stats}))


def cmd_hops(args):
    """hops CONFIG A B: shortest path length in links, and every shortest path."""
    cfg = load_config(args[0])
    a, b = args[1], args[2]
    adj = {n: set() for n in cfg["servers"]}
    for x, y in cfg["links"]:
        adj[x].add(y)
        adj[y].add(x)
    paths = [[a]]
    found = []
    seen = {a}
    while paths and not found:
        nxt = []
        for p in paths:
            for n in sorted(adj[p[-1]]):
                if n == b:
                    found.append(p + [n])
                elif n not in seen:
                    nxt.append(p + [n])
        seen |= {p[-1] for p in nxt}
        paths = nxt
    hops = len(found[0]) - 1 if found else -1
    print(json.dumps({"hops": hops, "paths": ["-".join(p) for p in found]}))


def cmd_gen_iamats(args):
    """gen-iamats OUT PREFIX N [START]: N IAMATs for N distinct clients."""
    out, prefix, n = args[0], args[1], int(args[2])
    start = int(args[3]) if len(args) > 3 else 0
    with open(out, "w") as f:
        for i in range(start, start + n):
            f.write(f"IAMAT {prefix}-{i} +34.068930-118.445127 1520023934.{i % 10**9:09d}\n")


def try_connect(addr):
    try:
        with socket.create_connection(addr, timeout=0.05):
            return True
    except OSError:
        return False


def cmd_startup(args):
    """startup CONFIG SERVER_BIN LOGDIR RUNS: exec → every port accepting, and exec → the
    first WHATSAT answered (IAMAT then WHATSAT on one connection to the first server)."""
    cfg = load_config(args[0])
    binary, logdir, runs = args[1], args[2], int(args[3])
    addrs = [addr_of(e, "addr") for e in cfg["servers"].values()]
    first = addrs[0]
    ports_ms, whatsat_ms, errors = [], [], []
    env = dict(os.environ)
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen([binary, "--config", args[0], "--all", "--log-dir", logdir],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        try:
            pending = list(addrs)
            deadline = t0 + 10
            while pending and time.perf_counter() < deadline:
                if proc.poll() is not None:
                    break
                pending = [a for a in pending if not try_connect(a)]
                if pending:
                    time.sleep(0.0005)
            if pending:
                err = proc.stderr.read().decode() if proc.poll() is not None else ""
                errors.append(f"ports not accepting within 10 s {err.strip()}")
                continue
            t1 = time.perf_counter()
            ports_ms.append((t1 - t0) * 1000)
            with socket.create_connection(first, timeout=5) as s:
                s.sendall(b"IAMAT startup +34.068930-118.445127 1520023934.918963997\n"
                          b"WHATSAT startup 10 1\n")
                buf = b""
                while buf.count(b"\n") < 1 or b"\n\n" not in buf.split(b"\n", 1)[1]:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
            t2 = time.perf_counter()
            if b'"status"' in buf:
                whatsat_ms.append((t2 - t0) * 1000)
            else:
                errors.append("WHATSAT got no places answer: " + buf[:200].decode(errors="replace"))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    print(json.dumps({"ports_ms": ports_ms, "whatsat_ms": whatsat_ms, "errors": errors}))


def cmd_median(args):
    vals = [float(v) for v in args]
    print(statistics.median(vals) if vals else "nan")


def cmd_json(args):
    """json FILE KEY.PATH: one value out of a JSON file (one object)."""
    with open(args[0]) as f:
        v = json.load(f)
    for k in args[1].split("."):
        v = v[int(k)] if isinstance(v, list) else v[k]
    print(v if not isinstance(v, (dict, list)) else json.dumps(v))


# ---- the table -------------------------------------------------------------------------

def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "/s":
        return f"{v:,.0f}/s"
    if unit == "us":
        return f"{v:,.0f} µs" if v >= 100 else f"{v:.1f} µs"
    if unit == "ms":
        return f"{v:.1f} ms"
    if unit == "MB":
        return f"{v:.1f} MB"
    if float(v).is_integer():
        return f"{int(v)}"
    return f"{v:.3f}"


def cmd_row(args):
    """row RESULTS key=value...: median the rounds, decide met?, append one JSON row.

    keys: order (sort key in the table), figure, herd (space-separated rounds), ref (rounds), ref_label, unit,
    kind (ratio_ge | abs_ge | abs_le | eq | info), target (number), target_text,
    check (ok | fail: reason), note."""
    results = args[0]
    kv = {}
    for a in args[1:]:
        k, _, v = a.partition("=")
        kv[k] = v
    unit = kv.get("unit", "")
    herd_vals = [float(x) for x in kv.get("herd", "").split()]
    ref_vals = [float(x) for x in kv.get("ref", "").split()]
    herd = statistics.median(herd_vals) if herd_vals else None
    ref = statistics.median(ref_vals) if ref_vals else None
    ref_fixed = kv.get("ref_fixed")
    ratio = herd / ref if herd is not None and ref else None
    kind = kv.get("kind", "info")
    target = float(kv["target"]) if kv.get("target") else None
    met = None
    if herd is not None and target is not None:
        if kind == "ratio_ge":
            met = ratio is not None and ratio >= target
        elif kind == "abs_ge":
            met = herd >= target
        elif kind == "abs_le":
            met = herd <= target
        elif kind == "eq":
            met = abs(herd - target) < 1e-9
    check = kv.get("check", "ok")
    if check != "ok":
        met = False
    if herd is None:
        met = False
    row = {
        "order": float(kv.get("order", "1000")),
        "figure": kv["figure"],
        "herd": fmt(herd, unit) if herd is not None else "not measured",
        "herd_raw": herd,
        "rounds": herd_vals,
        "reference": (fmt(ref, unit) + (f" ({kv['ref_label']})" if kv.get("ref_label") else ""))
        if ref is not None else (ref_fixed or "—"),
        "ratio": (f"{ratio:.2f}×" + (" (lower is better)" if unit in ("us", "ms", "MB") else ""))
        if ratio is not None else "—",
        "target": kv.get("target_text", "—"),
        "met": "—" if met is None else ("yes" if met else "**no**"),
        "note": kv.get("note", "") + ("" if check == "ok" else f" CHECK FAILED: {check}"),
    }
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"bench: {row['figure']}: {row['herd']} | ref {row['reference']} | "
          f"{row['ratio']} | {row['target']} | {row['met']} {row['note']}", file=sys.stderr)


def cell(s):
    return str(s).replace("|", "\\|").replace("\n", " ")


def cmd_render(args):
    """render RESULTS HEADER_JSON: the Markdown page."""
    rows = [json.loads(line) for line in open(args[0]) if line.strip()]
    rows.sort(key=lambda r: r.get("order", 1000))  # stable: measurement order within a key
    with open(args[1]) as f:
        h = json.load(f)
    out = []
    out.append("# herd benchmark results\n")
    out.append(f"- date: {h['date']}")
    out.append(f"- machine: `nproc` = {h['nproc']}, CPU: {h['cpu']}, kernel: {h['kernel']}")
    out.append(f"- commit: {h['commit']}")
    out.append(f"- command: `{h['command']}`")
    out.append(f"- settings: {h['settings']}")
    out.append(f"- load average at start / end: {h['load_start']} / {h['load_end']}")
    out.append(f"- logging: {h['logging']}")
    out.append(f"- duration of the run: {h['elapsed']}")
    out.append("")
    out.append("| # | figure | herd | reference | ratio | target | met? |")
    out.append("|---|---|---|---|---|---|---|")
    notes = []
    for i, r in enumerate(rows, 1):
        out.append("| " + " | ".join(cell(x) for x in
                   [i, r["figure"], r["herd"], r["reference"], r["ratio"], r["target"], r["met"]]) + " |")
        if r.get("note"):
            notes.append(f"{i}. {r['note']}")
    out.append("")
    out.append("Medians of the rounds; ratio = herd ÷ reference, both measured in this run.")
    out.append("")
    if notes:
        out.append("Notes per row:\n")
        out.extend(notes)
        out.append("")
    print("\n".join(out))


COMMANDS = {
    "ports": cmd_ports,
    "config": cmd_config,
    "stats": cmd_stats,
    "wait-quiet": cmd_wait_quiet,
    "hops": cmd_hops,
    "gen-iamats": cmd_gen_iamats,
    "startup": cmd_startup,
    "median": cmd_median,
    "json": cmd_json,
    "row": cmd_row,
    "render": cmd_render,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit("usage: tools.py " + "|".join(COMMANDS) + " ...")
    COMMANDS[sys.argv[1]](sys.argv[2:])
