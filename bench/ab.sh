#!/usr/bin/env bash
# A/B benchmark: two herd-server builds side by side in one run, rounds interleaved (A, B, A,
# B, ...), both driven by the same herd-cli (B's). Rows T1 (one server, pipeline 1), T2 (one
# server, pipeline 16), T3 (classic clients), T4 (the default herd of five servers in one
# process, pipeline 16 over all) and T4P (the same herd as five processes, one per server, a
# deployment's shape; acknowledged IAMATs over the load time plus the wait until every store
# is equal), as in bench/run.sh. Use it to show a change is (or is not) within noise of the build before it.
#
#   bench/ab.sh OLD_TARGET_DIR [NEW_TARGET_DIR]
#
# Each TARGET_DIR must hold release/herd-server (NEW_TARGET_DIR also release/herd-cli);
# NEW_TARGET_DIR defaults to <repo>/target, built here unless SKIP_BUILD=1. To measure the
# commit before yours:
#   git worktree add /tmp/herd-old HEAD~1 && (cd /tmp/herd-old && cargo build --release -p herd-server)
#   bench/ab.sh /tmp/herd-old/target
#
# Environment: ROUNDS [5] rounds per build and row, ROUND_S [2] seconds per round,
# ROWS ["T1 T2 T3 T4"] which rows (T4P also exists) (T3: classic clients, a new connection per IAMAT),
# RESULTS [bench/ab-results.md] where the table goes; LIMITS_A, LIMITS_B: JSON objects merged
# into the config's "limits" of A's or B's servers (e.g. LIMITS_B='{"nearby_index": false}'
# with the same build as A and B measures what one setting costs).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TOOLS=(python3 "$HERE/tools.py")
export BENCH_TOOLS=$HERE/tools.py
OLD=${1:?usage: bench/ab.sh OLD_TARGET_DIR [NEW_TARGET_DIR]}
NEW=${2:-$REPO/target}
ROUNDS=${ROUNDS:-5}
ROUND_S=${ROUND_S:-2}
RESULTS=${RESULTS:-$HERE/ab-results.md}
ROWS=${ROWS:-T1 T2 T3 T4}
CONNS=64
KEYS=100000

log() { printf 'ab: %s\n' "$*" >&2; }
die() { log "error: $*"; stop; exit 1; }

if [[ ${SKIP_BUILD:-0} != 1 && $NEW == "$REPO/target" ]]; then
    (cd "$REPO" && cargo build --release -p herd-server -p herd-cli)
fi
CLI=$NEW/release/herd-cli
for f in "$OLD/release/herd-server" "$NEW/release/herd-server" "$CLI"; do
    [[ -x $f ]] || die "missing $f"
done

TMP=$(mktemp -d /tmp/herd-ab.XXXXXX)
PID=""
stop() {
    [[ -n $PID ]] || return 0
    local p
    for p in $PID; do kill -TERM "$p" 2>/dev/null || true; done
    for p in $PID; do wait "$p" 2>/dev/null || true; done
    PID=""
}
trap 'stop; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

start() { # start BINARY KIND(single|default) [LIMITS_JSON]: sets CFG, PID
    local bin=$1 kind=$2 limits=${3:-} want=1 i
    CFG=$TMP/herd-$kind.json
    if [[ $kind == default || $kind == five ]]; then
        "${TOOLS[@]}" config "$CFG" default "$REPO/deploy/herd.json"; want=5
    else
        "${TOOLS[@]}" config "$CFG" single Goloman
    fi
    if [[ -n $limits ]]; then
        python3 -c 'import json,sys; c=json.load(open(sys.argv[1])); c.setdefault("limits", {}).update(json.loads(sys.argv[2])); json.dump(c, open(sys.argv[1], "w"))' "$CFG" "$limits"
    fi
    rm -rf "$TMP/logs"; mkdir -p "$TMP/logs"
    if [[ $kind == five ]]; then
        # One process per server, each with a stderr file of its own (lines written to one
        # file at once by five processes can interleave and spoil the "listening on" count).
        rm -f "$TMP"/server.err*
        PID=""
        local n
        for n in $(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["servers"]))' "$CFG"); do
            env -u RUST_LOG "$bin" --config "$CFG" --log-dir "$TMP/logs" "$n" 2>"$TMP/server.err.$n" &
            PID+=" $!"
        done
    else
        env -u RUST_LOG "$bin" --config "$CFG" --all --log-dir "$TMP/logs" 2>"$TMP/server.err" &
        PID=$!
    fi
    for ((i = 0; i < 150; i++)); do
        if [[ $(cat "$TMP"/server.err* 2>/dev/null | grep -c ' listening on ' || true) -ge $want ]]; then
            [[ $want == 1 ]] && return 0
            # Every link up: the stats of each server list all its neighbours.
            if python3 - "$CFG" <<'EOF'
import json, os, subprocess, sys
cfg = json.load(open(sys.argv[1]))
stats = json.loads(subprocess.check_output(["python3", os.environ["BENCH_TOOLS"], "stats", sys.argv[1]]))
deg = {n: 0 for n in cfg["servers"]}
for a, b in cfg["links"]:
    deg[a] += 1; deg[b] += 1
sys.exit(0 if all(len(stats[n]["links_up"]) == deg[n] for n in deg) else 1)
EOF
            then return 0; fi
        fi
        sleep 0.1
    done
    die "herd-server $bin did not start: $(cat "$TMP"/server.err*)"
}

round() { # round BINARY KIND LIMITS_JSON LOAD-ARGS...: prints requests/s of one round (errors fail it)
    local bin=$1 kind=$2 limits=$3; shift 3
    start "$bin" "$kind" "$limits"
    timeout $((ROUND_S + 60)) "$CLI" --config "$CFG" "$@" --duration "${ROUND_S}s" --fresh -k "$KEYS" --json >"$TMP/l.json" ||
        die "herd-cli load failed: $(cat "$TMP/l.json")"
    local errs
    errs=$("${TOOLS[@]}" json "$TMP/l.json" errors | python3 -c 'import json,sys; print(sum(json.load(sys.stdin).values()))')
    [[ $errs == 0 ]] || die "round with $errs load errors against $bin"
    if [[ $kind == five ]]; then
        # The whole herd's figure: acknowledged IAMATs over the load time plus the time
        # until every store holds every record (same record count and digest everywhere).
        "${TOOLS[@]}" wait-equal "$CFG" 60 >"$TMP/eq.json"
        [[ $("${TOOLS[@]}" json "$TMP/eq.json" equal) == True ]] || die "stores still differ after 60 s against $bin"
        # Peer sessions beyond each link's first (a link dropped under the load and came
        # back): every session start answers one digest at each end.
        "${TOOLS[@]}" stats "$CFG" | python3 -c 'import json,sys; s=json.load(sys.stdin); c=json.load(open(sys.argv[1])); print(sum(v["resyncs"] for v in s.values()) // 2 - len(c["links"]))' "$CFG" >"$TMP/flaps"
        stop
        python3 -c 'import json,sys; l=json.load(open(sys.argv[1])); e=json.load(open(sys.argv[2])); print(l["ok"] / (l["elapsed_s"] + e["waited_s"]))' "$TMP/l.json" "$TMP/eq.json"
        return
    fi
    stop
    "${TOOLS[@]}" json "$TMP/l.json" requests_per_s
}

{
    echo "# A/B: $(date -u +%Y-%m-%dT%H:%MZ), $ROUNDS interleaved rounds of ${ROUND_S}s per build and row"
    echo
    echo "- A: $OLD/release/herd-server"
    echo "- B: $NEW/release/herd-server"
    echo "- load: $CLI (B's herd-cli for both), $CONNS connections, a new client id per IAMAT (--fresh -k $KEYS), default logging"
    echo
    echo "| row | A median /s | B median /s | B / A | A rounds | B rounds |"
    echo "| --- | ---: | ---: | ---: | --- | --- |"
} >"$RESULTS"

row() { # row NAME KIND LOAD-ARGS...
    local name=$1 kind=$2; shift 2
    local a="" b="" fa="" fb="" r
    for ((r = 1; r <= ROUNDS; r++)); do
        rm -f "$TMP/flaps"
        a+=" $(round "$OLD/release/herd-server" "$kind" "${LIMITS_A:-}" "$@")"
        [[ -f $TMP/flaps ]] && fa+=" $(cat "$TMP/flaps")"
        rm -f "$TMP/flaps"
        b+=" $(round "$NEW/release/herd-server" "$kind" "${LIMITS_B:-}" "$@")"
        [[ -f $TMP/flaps ]] && fb+=" $(cat "$TMP/flaps")"
        log "$name round $r: A$a | B$b"
    done
    [[ -z $fa ]] || FLAPS+="- ${name%%:*}: link sessions replaced per round (a link dropped under the load and came back), A:$fa; B:$fb"$'\n'
    python3 - "$name" "$a" "$b" >>"$RESULTS" <<'EOF'
import statistics, sys
name, a, b = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
ma, mb = statistics.median(a), statistics.median(b)
f = lambda v: " ".join(f"{x:,.0f}" for x in v)
print(f"| {name} | {ma:,.0f} | {mb:,.0f} | {mb / ma:.3f} | {f(a)} | {f(b)} |")
EOF
}

FLAPS=""
for r in $ROWS; do
    case $r in
        T1) row "T1: 1 server, IAMAT, pipeline 1" single --to Goloman load -c "$CONNS" -d 1 ;;
        T2) row "T2: 1 server, IAMAT, pipeline 16" single --to Goloman load -c "$CONNS" -d 16 ;;
        T3) row "T3: 1 server, classic clients (a connection per IAMAT)" single --to Goloman load --mode classic -c "$CONNS" ;;
        T4) row "T4: 5 servers, IAMAT, pipeline 16 over all" default load --all -c "$CONNS" -d 16 ;;
        T4P) row "T4P: 5 servers as 5 processes, IAMAT, pipeline 16 over all, acks/s until every store holds every record" five load --all -c "$CONNS" -d 16 ;;
        *) die "unknown row $r (T1 T2 T3 T4 T4P)" ;;
    esac
done
[[ -z $FLAPS ]] || printf '\n%s' "$FLAPS" >>"$RESULTS"
cat "$RESULTS"
