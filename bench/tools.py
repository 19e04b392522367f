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


QUIET_S = 1.5


def cmd_wait_quiet(args):
    """wait-quiet CONFIG TIMEOUT_S: poll the stats until nothing changes (for one poll
    when every store is equal, else for QUIET_S) and report whether every server holds the
    same records (count and digest). QUIET_S outlasts the longest wait before a graft
    (1 s, docs/peer-protocol.md): a record announced but not yet grafted changes nothing
    for that long, and a shorter quiet took such a herd for one that had settled unequal."""
    cfg = load_config(args[0])
    timeout = float(args[1])
    t0 = time.monotonic()
    prev = None
    since = None
    quiet = False
    stats = {}
    while time.monotonic() - t0 < timeout:
        stats = read_stats(cfg)
        snap = {n: (s["records"], s["digest"], s["updates_received"], s["stored"])
                for n, s in stats.items()}
        now = time.monotonic()
        if snap == prev:
            equal = (len({v[0] for v in snap.values()}) == 1
                     and len({v[1] for v in snap.values()}) == 1)
            if equal or now - since >= QUIET_S:
                quiet = True
                break
        else:
            prev, since = snap, now
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


def cmd_wait_equal(args):
    """wait-equal CONFIG TIMEOUT_S: poll every server's stats (10 ms apart) until all hold the
    same record count and digest; prints the seconds it took (from the call), or fails."""
    cfg = load_config(args[0])
    timeout = float(args[1])
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        stats = read_stats(cfg)
        if len({(s["records"], s["digest"]) for s in stats.values()}) == 1:
            print(json.dumps({"equal": True, "waited_s": time.monotonic() - t0,
                              "records": next(iter(stats.values()))["records"]}))
            return
        time.sleep(0.01)
    print(json.dumps({"equal": False, "waited_s": time.monotonic() - t0,
                      "records": {n: s["records"] for n, s in read_stats(cfg).items()}}))


# ---- CPU used by other processes ---------------------------------------------------------

def busy_jiffies():
    """Busy CPU time of the whole machine, in clock ticks (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)


def tree_jiffies(root):
    """CPU time of `root` and its live descendants, each with the children it waited for
    (utime + stime + cutime + cstime): every process the benchmark ran, exited ones
    included once their parent waited for them."""
    parent, times = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parent[int(d)] = int(fields[1])
        times[int(d)] = sum(int(x) for x in fields[11:15])
    total = 0
    for pid, t in times.items():
        p = pid
        for _ in range(64):
            if p == root:
                total += t
                break
            p = parent.get(p, 0)
            if p <= 1:
                break
    return total


def cmd_cpu_snap(args):
    """cpu-snap ROOT_PID OUT: the machine's busy ticks and the benchmark's, now."""
    with open(args[1], "w") as f:
        json.dump({"busy": busy_jiffies(), "bench": tree_jiffies(int(args[0])),
                   "t": time.monotonic()}, f)


def cmd_cpu_other(args):
    """cpu-other ROOT_PID SNAP: cores other processes used on average since the snapshot
    (the machine's busy time minus the benchmark's own processes'); '' without one."""
    try:
        with open(args[1]) as f:
            a = json.load(f)
    except OSError:
        print("")
        return
    hz = os.sysconf("SC_CLK_TCK")
    wall = max(1e-3, time.monotonic() - a["t"])
    other = (busy_jiffies() - a["busy"]) - (tree_jiffies(int(args[0])) - a["bench"])
    print(f"{max(0.0, other / hz / wall):.2f}")


def cmd_screen(args):
    """screen VALUE:ERRORS...: the 1-based numbers of the rounds not to fold into a median:
    with errors, no value, or below half the median of the other rounds."""
    rounds = []
    for a in args:
        v, _, e = a.partition(":")
        rounds.append((float(v) if v else 0.0, float(e or 0)))
    bad = []
    for i, (v, e) in enumerate(rounds):
        others = [x for j, (x, ee) in enumerate(rounds) if j != i and ee == 0 and x > 0]
        if e > 0 or v <= 0 or (others and v < 0.5 * statistics.median(others)):
            bad.append(str(i + 1))
    print(" ".join(bad))


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
    if unit == "B":
        return f"{v:,.0f} B"
    if unit == "x":
        return f"{v:.2f}×"
    if float(v).is_integer():
        return f"{int(v)}"
    return f"{v:.3f}"


def cmd_row(args):
    """row RESULTS key=value...: median the rounds, decide met?, append one JSON row.

    keys: order (sort key in the table), figure, herd (space-separated rounds), ref (rounds), ref_label, unit,
    kind (ratio_ge | ratio_le | abs_ge | abs_le | eq | info | skipped), target (number),
    target_text, check (ok | fail: reason), note, broken (why the rounds could not be folded
    into a figure: the row then shows that instead of a number), other_cpu (cores other
    processes used during the row)."""
    results = args[0]
    kv = {}
    for a in args[1:]:
        k, _, v = a.partition("=")
        kv[k] = v
    unit = kv.get("unit", "")
    herd_vals = [float(x) for x in kv.get("herd", "").split()]
    ref_vals = [float(x) for x in kv.get("ref", "").split()]
    broken = kv.get("broken", "").strip()
    herd = statistics.median(herd_vals) if herd_vals and not broken else None
    ref = statistics.median(ref_vals) if ref_vals else None
    ref_fixed = kv.get("ref_fixed")
    ratio = herd / ref if herd is not None and ref else None
    kind = kv.get("kind", "info")
    target = float(kv["target"]) if kv.get("target") else None
    met = None
    if herd is not None and target is not None:
        if kind == "ratio_ge":
            met = ratio is not None and ratio >= target
        elif kind == "ratio_le":
            met = ratio is not None and ratio <= target
        elif kind == "abs_ge":
            met = herd >= target
        elif kind == "abs_le":
            met = herd <= target
        elif kind == "eq":
            met = abs(herd - target) < 1e-9
    check = kv.get("check", "ok")
    if check != "ok":
        met = False
    if herd is None and kind != "skipped":
        met = False
    if kind == "skipped":
        met = None
    row = {
        "order": float(kv.get("order", "1000")),
        "figure": kv["figure"],
        "herd": fmt(herd, unit) if herd is not None
        else ("skipped" if kind == "skipped" else (f"broken: {broken}" if broken else "not measured")),
        "herd_raw": herd,
        "rounds": herd_vals,
        "reference": (fmt(ref, unit) + (f" ({kv['ref_label']})" if kv.get("ref_label") else ""))
        if ref is not None else (ref_fixed or "—"),
        "ratio": (f"{ratio:.2f}×" + (" (lower is better)" if unit in ("us", "ms", "MB") else ""))
        if ratio is not None else "—",
        "target": kv.get("target_text", "—"),
        "met": "—" if met is None else ("yes" if met else "**no**"),
        "note": kv.get("note", "") + ("" if check == "ok" else f" CHECK FAILED: {check}"),
        "other_cpu": kv.get("other_cpu", ""),
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
    out.append("| # | figure | herd | reference | ratio | target | met? | other CPU |")
    out.append("|---|---|---|---|---|---|---|---|")
    notes = []
    for i, r in enumerate(rows, 1):
        out.append("| " + " | ".join(cell(x) for x in
                   [i, r["figure"], r["herd"], r["reference"], r["ratio"], r["target"], r["met"],
                    (r.get("other_cpu") or "—")]) + " |")
        if r.get("note"):
            notes.append(f"{i}. {r['note']}")
    out.append("")
    out.append("Medians of the rounds; ratio = herd ÷ reference, both measured in this run. A round "
               "with errors, or below half the median of its row's other rounds, is not folded into "
               "a median: it is retried (at most twice) and named in the row's note; a row whose "
               "rounds stay broken says so instead of a number. Other CPU: cores used on average "
               "by processes other than the benchmark's own during the row (/proc/stat minus the "
               "benchmark's processes); above ~0.2 the row shared the machine. MB = 10^6 bytes.")
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
    "wait-equal": cmd_wait_equal,
    "cpu-snap": cmd_cpu_snap,
    "cpu-other": cmd_cpu_other,
    "screen": cmd_screen,
    "json": cmd_json,
    "row": cmd_row,
    "render": cmd_render,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit("usage: tools.py " + "|".join(COMMANDS) + " ...")
    COMMANDS[sys.argv[1]](sys.argv[2:])
