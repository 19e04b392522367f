#!/usr/bin/env python3
"""Helpers for deploy/container/test.sh: podman run arguments derived from deploy/compose.yaml,
a line-protocol client, and a server's counters and readiness from its admin listener. Every
network wait is bounded. HERD_TEST_TOKEN is the admin token, when the config has one.

  herdtest.py run-args COMPOSE SERVICE PREFIX NETWORK IMAGE   NUL-separated `podman run` args
  herdtest.py services COMPOSE                                the server services, one a line
  herdtest.py send HOST:PORT LINE...                          send lines, print the replies
  herdtest.py stats ADDR                                      one server's counters (GET /stats)
  herdtest.py same ADDR RECORDS PID...                         exit 0 when every server holds
                                                              RECORDS records, one digest
  herdtest.py ready ADDR                                      exit 0 when GET /readyz is 200
"""

import json
import os
import socket
import sys

WAIT = 5.0  # seconds: bound on every connect, send and read


def load_compose(path):
    import yaml  # PyYAML; .ci/run installs it when missing

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def server_services(compose):
    """The services that run a herd server (those naming one in HERD_NAME)."""
    return [
        name
        for name, svc in compose["services"].items()
        if "HERD_NAME" in (svc.get("environment") or {})
    ]


def run_args(compose_path, service, prefix, network, image):
    """`podman run` arguments for one compose service: its environment, volumes (named volumes
    get the prefix, relative bind mounts are resolved beside the compose file), ulimits,
    entrypoint and command, on `network` with the service name as its network alias (the
    name peers dial). Ports are not published: the test reaches servers from inside."""
    compose = load_compose(compose_path)
    base = os.path.dirname(os.path.abspath(compose_path))
    svc = compose["services"][service]
    args = ["--name", f"{prefix}-{service}", "--label", f"herd-test={prefix}"]
    args += ["--network", network, "--network-alias", service]
    args += ["--hostname", svc.get("hostname", service)]
    for k, v in (svc.get("environment") or {}).items():
        args += ["-e", f"{k}={v}"]
    for vol in svc.get("volumes") or []:
        src, rest = vol.split(":", 1)
        if src.startswith(".") or src.startswith("/"):
            src = os.path.normpath(os.path.join(base, src))
        else:
            src = f"{prefix}-{src}"
        args += ["-v", f"{src}:{rest}"]
    for k, v in (svc.get("ulimits") or {}).items():
        if isinstance(v, dict):
            args += ["--ulimit", f"{k}={v['soft']}:{v['hard']}"]
        else:
            args += ["--ulimit", f"{k}={v}:{v}"]
    if (svc.get("healthcheck") or {}).get("disable"):
        args.append("--no-healthcheck")
    entry = svc.get("entrypoint")
    if entry:
        args += ["--entrypoint", json.dumps(entry)]
    args.append(image)
    args += svc.get("command") or []
    return args


def connect(addr):
    host, port = addr.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=WAIT)


def read_all(sock, limit=1 << 20):
    out = b""
    while len(out) < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    return out


def send(addr, lines):
    with connect(addr) as s:
        s.sendall("".join(line + "\n" for line in lines).encode())
        s.shutdown(socket.SHUT_WR)
        return read_all(s).decode(errors="replace")


def http_get(addr, path, token=None):
    """(status, body) of GET path at addr, HTTP/1.1, connection closed after."""
    with connect(addr) as s:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        s.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n".encode()
        )
        raw = read_all(s).decode(errors="replace")
    head, _, body = raw.partition("\r\n\r\n")
    status = int(head.split()[1]) if head.startswith("HTTP/") else 0
    if "transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return status, body


def dechunk(body):
    out, rest = [], body
    while rest:
        size_line, _, rest = rest.partition("\r\n")
        size = int(size_line.split(";")[0] or "0", 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2 :]
    return "".join(out)


def stats(addr, token=None):
    """The counters: GET /stats on the admin listener (the bearer token when given)."""
    status, body = http_get(addr, "/stats", token)
    if status != 200:
        raise ValueError(f"GET /stats at {addr}: status {status}: {body.strip()[:200]}")
    return json.loads(body)


def stats_in(pid, addr, token=None):
    """stats() from inside the network namespace of process `pid` (its loopback), then back:
    one process polls every container (setns(2) through ctypes; Python 3.11 has no os.setns)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    clone_newnet = 0x40000000
    with open("/proc/self/ns/net", "rb") as home, open(f"/proc/{pid}/ns/net", "rb") as there:
        if libc.setns(there.fileno(), clone_newnet) != 0:
            raise OSError(ctypes.get_errno(), f"setns into process {pid}'s network")
        try:
            return stats(addr, token)
        finally:
            if libc.setns(home.fileno(), clone_newnet) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")


def same(addr, want, pids, token=None):
    """Whether every server (by PID) holds `want` records with one digest; prints them."""
    seen = []
    for pid in pids:
        try:
            s = stats_in(pid, addr, token)
            seen.append((s["server"], s["records"], s["digest"]))
        except (OSError, ValueError) as e:
            seen.append((f"pid {pid}", None, str(e)))
    print(" ".join(f"{n}:{r}:{d}" for n, r, d in seen))
    return all(r == want for _, r, _ in seen) and len({d for _, _, d in seen}) == 1


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "run-args":
        sys.stdout.write("\0".join(run_args(*argv[2:7])) + "\0")
    elif cmd == "services":
        print("\n".join(server_services(load_compose(argv[2]))))
    elif cmd == "send":
        sys.stdout.write(send(argv[2], argv[3:]))
    elif cmd == "stats":
        print(json.dumps(stats(argv[2], os.environ.get("HERD_TEST_TOKEN"))))
    elif cmd == "same":
        token = os.environ.get("HERD_TEST_TOKEN")
        return 0 if same(argv[2], int(argv[3]), argv[4:], token) else 1
    elif cmd == "ready":
        status, body = http_get(argv[2], "/readyz")
        print(f"{status} {body.strip()}")
        return 0 if status == 200 else 1
    else:
        print(__doc__, file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError) as e:
        print(f"herdtest.py: {e}", file=sys.stderr)
        sys.exit(1)
