#!/usr/bin/env bash
# herd benchmark (issue 6): every figure of the issue in one run on one machine, written
# as a Markdown table to bench/results.md and printed. See bench/README.md.
#
#   bench/run.sh              full run (about 12 minutes on 2 cores, build included when incremental)
#   QUICK=1 bench/run.sh      quick run: every row, small (about 1.5 minutes)
#
# Environment (defaults in brackets, QUICK values after the slash):
#   ROUNDS [5/3]         rounds per throughput figure (median reported)
#   ROUND_S [3/1]        seconds per throughput round
#   PROBE_ROUNDS [1000/30] propagation probe rounds
#   STARTUP_RUNS [10/5]  start-up runs
#   MEM_CLIENTS [1000000/50000] clients stored for the memory figure
#   NEAR_CLIENTS [1000000/50000] clients in the dense area of the NEARBY and memory rows
#   FENCES [10000/1000]  fences open on one server in the fence rows
#   CLASSIC_N [30000/5000] connections per classic-client round
#   WARN_ROWS [1]        also measure with RUST_LOG=warn (per-message logging off)
#   JOURNAL_ROWS [1]     also measure T1/T2 with the journal on (--data-dir; durability cost)
#   WORKER_ROWS [1]      also measure T1/T2 with one runtime worker thread (--workers 1)
#   TLS_ROWS [1]         also measure T1/T2/T4 with TLS on the peer links (herd-cli certs)
#   SKIP_BUILD [0]       use the binaries already in $CARGO_TARGET_DIR/release
#   CARGO_TARGET_DIR     cargo's target dir [<repo>/target]
#   RESULTS              output file [bench/results.md]
#   KEEP_TMP [0]         keep the temp dir (configs, logs, raw outputs)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TOOLS=(python3 "$HERE/tools.py")
QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
    ROUNDS=${ROUNDS:-3}; ROUND_S=${ROUND_S:-0.3}; PROBE_ROUNDS=${PROBE_ROUNDS:-30}
    STARTUP_RUNS=${STARTUP_RUNS:-3}; BG_S=${BG_S:-5}
    MEM_CLIENTS=${MEM_CLIENTS:-50000}; NEAR_CLIENTS=${NEAR_CLIENTS:-50000}
    FENCES=${FENCES:-1000}; CLASSIC_N=${CLASSIC_N:-5000}
else
    ROUNDS=${ROUNDS:-5}; ROUND_S=${ROUND_S:-3}; PROBE_ROUNDS=${PROBE_ROUNDS:-1000}
    STARTUP_RUNS=${STARTUP_RUNS:-10}; BG_S=${BG_S:-30}
    MEM_CLIENTS=${MEM_CLIENTS:-1000000}; NEAR_CLIENTS=${NEAR_CLIENTS:-1000000}
    FENCES=${FENCES:-10000}; CLASSIC_N=${CLASSIC_N:-30000}
fi
RETRIES=${RETRIES:-2}   # re-runs of a broken round (errors, or < 0.5x the median of the others)
AREA_KM=20              # the dense "city": a 20 km square around UCLA
FENCE_KM=${FENCE_KM:-0.02}
WARN_ROWS=${WARN_ROWS:-1}
JOURNAL_ROWS=${JOURNAL_ROWS:-1}
WORKER_ROWS=${WORKER_ROWS:-1}
TLS_ROWS=${TLS_ROWS:-1}
TLS_DIR=""   # set while the herds started carry TLS on their peer links
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_MD=${RESULTS:-$HERE/results.md}
KEEP_TMP=${KEEP_TMP:-0}
CONNS=64
KEYS=100000
LON=-118.445127
LAT=34.068930
COMMAND="QUICK=$QUICK ROUNDS=$ROUNDS ROUND_S=$ROUND_S PROBE_ROUNDS=$PROBE_ROUNDS STARTUP_RUNS=$STARTUP_RUNS MEM_CLIENTS=$MEM_CLIENTS NEAR_CLIENTS=$NEAR_CLIENTS FENCES=$FENCES CLASSIC_N=$CLASSIC_N WARN_ROWS=$WARN_ROWS JOURNAL_ROWS=$JOURNAL_ROWS WORKER_ROWS=$WORKER_ROWS TLS_ROWS=$TLS_ROWS bench/run.sh"
T_START=$(date +%s)

log() { printf 'bench: [+%ss] %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- temp dir, processes, cleanup -------------------------------------------------------

TMP=$(mktemp -d /tmp/herd-bench.XXXXXX)
SERVER_PID=""
SERVER_ARGS=()   # extra herd-server options for the next start_herd (e.g. --data-dir)
REDIS_PID=""
BG_PID=""
declare -A PIDS=()   # more servers running at once (interleaved rows), by tag

stop_pid() { # stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    local p
    stop_pid "$BG_PID"
    stop_pid "$SERVER_PID"
    stop_pid "$REDIS_PID"
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    if [[ $KEEP_TMP == 1 ]]; then log "temp dir kept: $TMP"; else rm -rf "$TMP"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- build and install ------------------------------------------------------------------

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
if [[ $SKIP_BUILD != 1 ]]; then
    log "building release binaries into $CARGO_TARGET_DIR"
    (cd "$REPO" && cargo build --release -p herd-server -p herd-cli)
fi
SERVER=$CARGO_TARGET_DIR/release/herd-server
CLI=$CARGO_TARGET_DIR/release/herd-cli
[[ -x $SERVER && -x $CLI ]] || die "binaries missing in $CARGO_TARGET_DIR/release"

NEED=()
command -v redis-server >/dev/null || NEED+=(redis-server)
command -v redis-benchmark >/dev/null || NEED+=(redis-tools)
command -v jq >/dev/null || NEED+=(jq)
if [[ ${#NEED[@]} -gt 0 ]]; then
    log "installing ${NEED[*]} (Debian packages)"
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${NEED[@]}"
fi
command -v python3 >/dev/null || die "python3 is needed"
REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')

# ---- redis ------------------------------------------------------------------------------

start_redis() { # start_redis [TAG]: a fresh redis-server; sets RPORT and REDIS_PID
    local try
    for try in 1 2 3; do
        RPORT=$("${TOOLS[@]}" ports 1)
        # Several loopback addresses: each redis-benchmark connection-per-request round dials
        # a different one, so the previous rounds' TIME_WAIT sockets do not exhaust its
        # ephemeral ports. Protected mode off: herd-cli dials from 127.0.1.x source addresses.
        redis-server --port "$RPORT" --bind 127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5 \
            127.0.0.6 127.0.0.7 127.0.0.8 --save '' --appendonly no --protected-mode no \
            --daemonize no --dir "$TMP" --logfile "$TMP/redis.log" &
        REDIS_PID=$!
        local i
        for ((i = 0; i < 50; i++)); do
            if redis-cli -p "$RPORT" ping 2>/dev/null | grep -q PONG; then return 0; fi
            kill -0 "$REDIS_PID" 2>/dev/null || break
            sleep 0.1
        done
        stop_pid "$REDIS_PID"; REDIS_PID=""
    done
    die "redis-server did not start (see $TMP/redis.log)"
}

declare -A REDIS_N
redis_bench_round() { # redis_bench_round PIPELINE [extra...]: one redis-benchmark GEOADD round: VAL, ERRS
    local p=$1; shift
    local key="$p $*"
    local n=${REDIS_N[$key]:-$((p == 1 ? 100000 : 500000))}
    local host=127.0.0.1
    if [[ $* == *"-k 0"* ]]; then
        # A new connection per request: at most 20000 per round (one source address's
        # ephemeral ports), and a destination address of its own per round.
        n=$((CLASSIC_N < 20000 ? CLASSIC_N : 20000))
        REDIS_HOSTNO=$(((${REDIS_HOSTNO:-1} % 7) + 2))
        host=127.0.0.$REDIS_HOSTNO
    fi
    local out
    VAL=0; ERRS=1
    if ! out=$(timeout 120 redis-benchmark -h "$host" -p "$RPORT" -c "$CONNS" -P "$p" -n "$n" \
        -r "$KEYS" "$@" --csv GEOADD key "$LON" "$LAT" "member:__rand_int__" 2>"$TMP/rb.err"); then
        log "redis-benchmark failed: $(grep -v WARNING "$TMP/rb.err" | tr '\n' ' ' | cut -c1-200)"
        return 0
    fi
    VAL=$(printf '%s\n' "$out" | tail -1 | cut -d, -f2 | tr -d '"')
    [[ $VAL =~ ^[0-9.]+$ ]] || { VAL=0; return 0; }
    ERRS=0
    # Size the next round so it lasts about ROUND_S seconds.
    [[ $* == *"-k 0"* ]] || REDIS_N[$key]=$(python3 -c "print(max(20000, int(float('$VAL') * $ROUND_S)))")
}

# ---- herd servers -----------------------------------------------------------------------

LOGDIR=$TMP/logs

start_herd() { # start_herd KIND(default|single) LOGLEVEL(''=default) : sets CFG, SERVER_PID
    local kind=$1 level=$2 try want
    for try in 1 2 3; do
        CFG=$TMP/herd-$kind.json
        if [[ $kind == default ]]; then
            "${TOOLS[@]}" config "$CFG" default "$REPO/deploy/herd.json" "$TLS_DIR"; want=5
        else
            "${TOOLS[@]}" config "$CFG" single Goloman "$TLS_DIR"; want=1
        fi
        mkdir -p "$LOGDIR"; rm -f "$LOGDIR"/*.log
        if [[ -n $level ]]; then
            RUST_LOG=$level "$SERVER" --config "$CFG" --all --log-dir "$LOGDIR" "${SERVER_ARGS[@]}" 2>"$TMP/server.err" &
        else
            env -u RUST_LOG "$SERVER" --config "$CFG" --all --log-dir "$LOGDIR" "${SERVER_ARGS[@]}" 2>"$TMP/server.err" &
        fi
        SERVER_PID=$!
        local i
        for ((i = 0; i < 100; i++)); do
            if [[ $(grep -c ' listening on ' "$TMP/server.err" 2>/dev/null || true) -ge $want ]]; then
                wait_links "$want"
                return 0
            fi
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        log "server start failed (try $try): $(tr '\n' ' ' <"$TMP/server.err")"
        stop_pid "$SERVER_PID"; SERVER_PID=""
    done
    die "herd-server did not start"
}

stop_herd() { stop_pid "$SERVER_PID"; SERVER_PID=""; }

start_tagged() { # start_tagged TAG LEVEL [herd-server options...]: one more single server,
    # running beside the others (PIDS[TAG]); its config is $TMP/herd-TAG.json, its address ADDR_OF[TAG]
    local tag=$1 level=$2 try i; shift 2
    local cfg=$TMP/herd-$tag.json
    for try in 1 2 3; do
        "${TOOLS[@]}" config "$cfg" single Goloman "${TAG_TLS:-}"
        mkdir -p "$LOGDIR/$tag"
        if [[ -n $level ]]; then
            RUST_LOG=$level "$SERVER" --config "$cfg" --all --log-dir "$LOGDIR/$tag" "$@" 2>"$TMP/server-$tag.err" &
        else
            env -u RUST_LOG "$SERVER" --config "$cfg" --all --log-dir "$LOGDIR/$tag" "$@" 2>"$TMP/server-$tag.err" &
        fi
        PIDS[$tag]=$!
        for ((i = 0; i < 100; i++)); do
            if grep -q ' listening on ' "$TMP/server-$tag.err" 2>/dev/null; then
                ADDR_OF[$tag]=$(jq -r '.servers.Goloman.addr' "$cfg")
                return 0
            fi
            kill -0 "${PIDS[$tag]}" 2>/dev/null || break
            sleep 0.1
        done
        stop_pid "${PIDS[$tag]}"; unset "PIDS[$tag]"
    done
    die "herd-server $tag did not start: $(cat "$TMP/server-$tag.err")"
}
declare -A ADDR_OF=()
stop_tagged() { stop_pid "${PIDS[$1]:-}"; unset "PIDS[$1]"; rm -rf "$LOGDIR/$1"; }

wait_links() { # every server has all its links up (bounded: 15 s)
    [[ $1 -gt 1 ]] || return 0
    local i
    for ((i = 0; i < 150; i++)); do
        if python3 - "$CFG" <<'PY'
import json, subprocess, sys
cfg = json.load(open(sys.argv[1]))
import os
stats = json.loads(subprocess.check_output(["python3", os.environ["BENCH_TOOLS"], "stats", sys.argv[1]]))
deg = {n: 0 for n in cfg["servers"]}
for a, b in cfg["links"]:
    deg[a] += 1; deg[b] += 1
sys.exit(0 if all(len(stats[n]["links_up"]) == deg[n] for n in deg) else 1)
PY
        then return 0; fi
        sleep 0.1
    done
    die "herd links did not all come up within 15 s"
}
export BENCH_TOOLS=$HERE/tools.py

trim_logs() { # logs grow by tens of MB/s at info level: empty them between rounds
    local f
    for f in "$LOGDIR"/*.log "$LOGDIR"/*/*.log; do [[ -e $f ]] && : >"$f"; done
    return 0
}

# ---- rounds: one load run, screened, retried ---------------------------------------------

load_round() { # load_round ARGS...: one herd-cli run (JSON summary in $TMP/l.json): VAL (requests/s), ERRS
    local rc=0
    timeout 300 "$CLI" "$@" --json >"$TMP/l.json" 2>"$TMP/l.err" || rc=$?
    trim_logs
    VAL=0; ERRS=1
    if ! jq -e .requests_per_s "$TMP/l.json" >/dev/null 2>&1; then
        log "herd-cli $* failed (exit $rc): $(tail -c 300 "$TMP/l.err")"
        return 0
    fi
    VAL=$(jq -r '.requests_per_s' "$TMP/l.json" | head -1)
    ERRS=$(jq -r '[.errors[]] | add' "$TMP/l.json" | head -1)
}

declare -A VALS=() RAW=() BROKEN=() EXTRA=()
SIDES=()
# interleave TAG "COMMAND" [TAG "COMMAND"...]: ROUNDS rounds of each side in turn (A, B, ...,
# A, B, ...), each COMMAND a shell command that sets VAL and ERRS (and may set XTRA, a value
# kept per round in EXTRA[TAG]). Then each side's rounds are screened (tools.py screen: errors,
# or below half the median of the others), a broken round is run again (at most RETRIES
# times), and VALS[TAG] holds the rounds kept, RAW[TAG] every round run, BROKEN[TAG] why the
# side has no figure (empty when it has one).
interleave() {
    local -a tags=() cmds=()
    while [[ $# -gt 0 ]]; do tags+=("$1"); cmds+=("$2"); shift 2; done
    local -A v=() e=() x=()
    local r i t
    for ((r = 1; r <= ROUNDS; r++)); do
        for i in "${!tags[@]}"; do
            t=${tags[$i]}; XTRA=""
            eval "${cmds[$i]}"
            v[$t,$r]=$VAL; e[$t,$r]=$ERRS; x[$t,$r]=$XTRA
            RAW[$t]+=" $VAL"
            log "$t round $r: $VAL (errors $ERRS${XTRA:+, $XTRA})"
        done
    done
    for i in "${!tags[@]}"; do
        t=${tags[$i]}
        local try bad args retried=""
        for ((try = 0; try <= RETRIES; try++)); do
            args=()
            for ((r = 1; r <= ROUNDS; r++)); do args+=("${v[$t,$r]}:${e[$t,$r]}"); done
            bad=$("${TOOLS[@]}" screen "${args[@]}")
            [[ -n $bad && $try -lt $RETRIES ]] || break
            for r in $bad; do
                retried+=" $r ($(printf '%.0f' "${v[$t,$r]}"), errors ${e[$t,$r]})"
                XTRA=""
                eval "${cmds[$i]}"
                v[$t,$r]=$VAL; e[$t,$r]=$ERRS; x[$t,$r]=$XTRA
                RAW[$t]+=" $VAL"
                log "$t round $r again: $VAL (errors $ERRS)"
            done
        done
        VALS[$t]=""; EXTRA[$t]=""
        for ((r = 1; r <= ROUNDS; r++)); do
            [[ " $bad " == *" $r "* ]] && continue
            VALS[$t]+=" ${v[$t,$r]}"; EXTRA[$t]+=" ${x[$t,$r]}"
        done
        BROKEN[$t]=""
        if [[ -n $bad ]]; then
            BROKEN[$t]="rounds $bad still broken after $RETRIES retries (every round:${RAW[$t]})"
            VALS[$t]=""
        fi
        SCREEN_NOTE[$t]=${retried:+rounds retried:$retried}
    done
}
declare -A SCREEN_NOTE=()

RESULTS_JSONL=$TMP/results.jsonl
: >"$RESULTS_JSONL"
CPU_MARK=$TMP/cpu.json
cpu_mark() { "${TOOLS[@]}" cpu-snap $$ "$CPU_MARK"; }
row() { "${TOOLS[@]}" row "$RESULTS_JSONL" "$@" "other_cpu=$("${TOOLS[@]}" cpu-other $$ "$CPU_MARK")"; }
# side_row TAG ...: a row of side TAG (its rounds, or broken), other arguments as row's
side_row() { local t=$1; shift; row "herd=${VALS[$t]}" "broken=${BROKEN[$t]}" "$@"; }
notes() { local t out=""; for t in "$@"; do if [[ -n ${SCREEN_NOTE[$t]:-} ]]; then out+="; $t: ${SCREEN_NOTE[$t]}"; fi; done; printf '%s' "$out"; }

wait_conntrack() { # wait_conntrack NEED: until NEED more tracked connections fit (bounded, 150 s)
    local f=/proc/sys/net/netfilter/nf_conntrack_count max i
    [[ -r $f ]] || return 0
    max=$(cat /proc/sys/net/netfilter/nf_conntrack_max)
    for ((i = 0; i < 1500; i++)); do
        (($(cat "$f") + $1 < max * 8 / 10)) && return 0
        ((i % 100 == 0)) && log "waiting for conntrack entries to expire ($(cat "$f") of $max tracked)"
        CONNTRACK_WAITED=$((${CONNTRACK_WAITED:-0} + 1))
        sleep 0.1
    done
}

# ---- T1, T2: one server; herd and Redis through the same load generator --------------------

bench_single() {
    local p tag extra=() sides=()
    start_tagged base ""
    [[ $WARN_ROWS == 1 ]] && start_tagged warn warn
    if [[ $JOURNAL_ROWS == 1 ]]; then rm -rf "$TMP/data"; start_tagged journal "" --data-dir "$TMP/data"; fi
    if [[ $TLS_ROWS == 1 ]]; then TAG_TLS=$TMP/tls start_tagged tls ""; fi
    [[ $WORKER_ROWS == 1 ]] && start_tagged one "" --workers 1
    for p in 1 16; do
        cpu_mark
        local L="load -c $CONNS -d $p --duration ${ROUND_S}s --fresh -k $KEYS"
        sides=(herd "load_round --server ${ADDR_OF[base]} $L"
            redis "load_round --server 127.0.0.1:$RPORT $L --resp --resp-key geo$p"
            rb "redis_bench_round $p")
        [[ $WARN_ROWS == 1 ]] && sides+=(warn "load_round --server ${ADDR_OF[warn]} $L")
        [[ $JOURNAL_ROWS == 1 ]] && sides+=(journal "load_round --server ${ADDR_OF[journal]} $L")
        [[ $TLS_ROWS == 1 ]] && sides+=(tls "load_round --server ${ADDR_OF[tls]} $L")
        [[ $WORKER_ROWS == 1 ]] && sides+=(one "load_round --server ${ADDR_OF[one]} $L")
        interleave "${sides[@]}"
        local t=T$((p == 1 ? 1 : 2)) note="herd-cli $L against herd-server, and the same with --resp against redis $REDIS_VERSION (GEOADD key lon lat client: same connections, window, threads and client ids); every side's rounds interleaved"
        side_row herd "order=$p" "figure=$t: 1 server, IAMAT, $CONNS conns, pipeline $p" "ref=${VALS[redis]}" unit=/s \
            "ref_label=Redis GEOADD, same load generator" kind=ratio_ge target=1.0 "target_text=≥ 1.0× Redis" \
            "note=$note${BROKEN[redis]:+; Redis side broken: ${BROKEN[redis]}}$(notes herd redis)"
        side_row rb "order=$p.1" "figure=$t (second opinion): Redis GEOADD by redis-benchmark -c $CONNS -P $p -r $KEYS" \
            "ref=${VALS[redis]}" unit=/s "ref_label=Redis GEOADD by herd-cli load --resp" kind=info \
            "target_text=(the two load generators on one Redis)" "note=redis-benchmark is single-threaded, herd-cli load uses a thread per core$(notes rb)"
        [[ $WARN_ROWS == 1 ]] && side_row warn "order=$p.5" "figure=$t: same, RUST_LOG=warn" "ref=${VALS[herd]}" unit=/s \
            "ref_label=same with default logging" kind=info "target_text=(logging cost)" "note=a second server beside the first, rounds interleaved with it$(notes warn)"
        [[ $JOURNAL_ROWS == 1 ]] && side_row journal "order=$p.7" "figure=$t: same, journal on (--data-dir)" "ref=${VALS[herd]}" unit=/s \
            "ref_label=same without journal" kind=info "target_text=(durability cost)" \
            "note=herd-server --data-dir: every stored record written to the journal before its reply (no fsync); rounds interleaved with the server without it$(notes journal)"
        [[ $TLS_ROWS == 1 ]] && side_row tls "order=$p.8" "figure=$t: same, peer TLS configured" "ref=${VALS[herd]}" unit=/s \
            "ref_label=same without TLS" kind=info "target_text=(no peer link on one server: the no-cost control)" "note=rounds interleaved$(notes tls)"
        [[ $WORKER_ROWS == 1 ]] && side_row one "order=$p.6" "figure=$t: same, herd-server --workers 1" "ref=${VALS[redis]}" unit=/s \
            "ref_label=Redis GEOADD, same load generator" kind=info "target_text=(one runtime worker: no hand-over of the store between threads)" \
            "note=a server with one runtime worker thread beside the default one (one per CPU), rounds interleaved with it and with Redis$(notes one)"
    done
    for tag in base warn journal tls one; do [[ -n ${PIDS[$tag]:-} ]] && stop_tagged $tag; done
    rm -rf "$TMP/data"
}

classic_round() { # classic_round ADDR [--resp]: one classic round of CLASSIC_N connections
    wait_conntrack "$CLASSIC_N"
    load_round --server "$1" load --mode classic -c "$CONNS" -n "$CLASSIC_N" --fresh -k "$KEYS" "${@:2}"
}

bench_classic() { # T3: a connection per request; herd and Redis through herd-cli, redis-benchmark -k 0
    cpu_mark
    CONNTRACK_WAITED=0
    start_tagged classic ""
    interleave herd "classic_round ${ADDR_OF[classic]}" \
        redis "classic_round 127.0.0.1:$RPORT --resp --resp-key classic" \
        rb "wait_conntrack 20000; redis_bench_round 1 -k 0"
    local note="herd-cli load --mode classic -c $CONNS -n $CLASSIC_N per round (connect, IAMAT or GEOADD, half-close, read to the end), connections spread over 64 loopback source addresses; before each round the script waited until the kernel's connection tracking had room for it (waited $((CONNTRACK_WAITED / 10)) s in all; tracked TIME_WAIT entries last 120 s and a full table drops new connections, which is what spoiled earlier runs)"
    side_row herd order=20 "figure=T3: 1 server, classic clients (connect, IAMAT, half-close, read), $CONNS at once" \
        "ref=${VALS[redis]}" unit=/s "ref_label=Redis, same load generator" kind=abs_ge target=25000 "target_text=≥ 25,000/s" \
        "note=$note$(notes herd redis)${BROKEN[redis]:+; Redis side broken: ${BROKEN[redis]}}"
    side_row rb order=20.1 "figure=T3 (second opinion): Redis by redis-benchmark -k 0 -c $CONNS" "ref=${VALS[redis]}" unit=/s \
        "ref_label=Redis by herd-cli load --resp --mode classic" kind=info "target_text=(a redis client does not half-close and wait for the close)" \
        "note=one source address, a destination address of its own per round (redis listens on 127.0.0.1–8)$(notes rb)"
    stop_tagged classic
}

# ---- T4: the whole herd ----------------------------------------------------------------------

herd_round() { # herd_round: one T4 round on $CFG; then the stores compared (XTRA=check)
    load_round --config "$CFG" load --all -c "$CONNS" -d 16 --duration "${ROUND_S}s" --fresh -k "$KEYS"
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >"$TMP/q.json"
    [[ $(jq -r .converged "$TMP/q.json") == true ]] || XTRA="stores differ: $(jq -c .records "$TMP/q.json")"
}

five_round() { # five processes: acks/s including the time until every store holds every record
    local ok secs
    load_round --config "$CFG" load --all -c "$CONNS" -d 16 --duration "${ROUND_S}s" --fresh -k "$KEYS"
    [[ $ERRS == 0 ]] || return 0
    "${TOOLS[@]}" wait-equal "$CFG" 60 >"$TMP/eq.json"
    if [[ $(jq -r .equal "$TMP/eq.json") != true ]]; then
        ERRS=1; XTRA="stores still differ after 60 s: $(jq -c .records "$TMP/eq.json")"; return 0
    fi
    ok=$(jq -r .ok "$TMP/l.json"); secs=$(jq -r .elapsed_s "$TMP/l.json")
    XTRA=$(jq -r .waited_s "$TMP/eq.json")
    VAL=$(python3 -c "print($ok / ($secs + $XTRA))")
}

start_five() { # the default herd as five herd-server processes (a deployment's shape)
    local n i
    CFG=$TMP/herd-five.json
    "${TOOLS[@]}" config "$CFG" default "$REPO/deploy/herd.json"
    for n in $(jq -r '.servers|keys[]' "$CFG"); do
        mkdir -p "$LOGDIR/five"
        env -u RUST_LOG "$SERVER" --config "$CFG" --log-dir "$LOGDIR/five" "$n" 2>"$TMP/five-$n.err" &
        PIDS[five-$n]=$!
        for ((i = 0; i < 100; i++)); do
            grep -q ' listening on ' "$TMP/five-$n.err" 2>/dev/null && break
            kill -0 "${PIDS[five-$n]}" 2>/dev/null || die "herd-server $n did not start: $(cat "$TMP/five-$n.err")"
            sleep 0.1
        done
    done
    wait_links 5
}

bench_herd() {
    local check=ok w
    cpu_mark
    start_herd default ""
    interleave herd "herd_round"
    [[ -z ${EXTRA[herd]// /} ]] || check="a round's stores differed:${EXTRA[herd]}"
    side_row herd order=30 "figure=T4: whole herd (5 servers in one process), new record per IAMAT, $CONNS conns × pipeline 16 spread over all" \
        unit=/s kind=abs_ge target=100000 "target_text=≥ 100,000/s and all stores equal" "check=$check" \
        "note=herd-cli load --all --fresh -k $KEYS -c $CONNS -d 16; after every round the five stats endpoints are polled until quiet and their record count and digest compared$(notes herd)"
    HERD_T4=$("${TOOLS[@]}" median ${VALS[herd]:-0})
    HERD_MAX=$HERD_T4
    bench_flood_count
    bench_probe_idle ""
    bench_fence_idle
    bench_probe_loaded
    stop_herd

    cpu_mark
    start_five
    interleave five "five_round"
    side_row five order=31 "figure=T4: whole herd as five herd-server processes, acks/s until every store holds every record" \
        unit=/s kind=abs_ge target=100000 "target_text=≥ 100,000/s" \
        "note=one process per server (herd-server --config CFG NAME, as deploy/run-herd.sh does); per round: acknowledged IAMATs ÷ (load time + time until all five stats show the same record count and digest, polled every 10 ms; per round, s:${EXTRA[five]})$(notes five)"
    for w in $(jq -r '.servers|keys[]' "$CFG"); do stop_pid "${PIDS[five-$w]}"; unset "PIDS[five-$w]"; done
    rm -rf "$LOGDIR/five"

    if [[ $WARN_ROWS == 1 || $TLS_ROWS == 1 ]]; then
        # Reference herds beside the default one, their rounds interleaved with its rounds.
        cpu_mark
        start_herd default ""; cp "$CFG" "$TMP/herd-t4base.json"
        local base_cfg=$TMP/herd-t4base.json; local sides=(herd "CFG=$base_cfg herd_round")
        local -a extra_pids=()
        if [[ $WARN_ROWS == 1 ]]; then
            SERVER_PID_SAVE=$SERVER_PID; LOGDIR_SAVE=$LOGDIR; LOGDIR=$TMP/logs/warn
            start_herd default warn; cp "$CFG" "$TMP/herd-warn.json"; PIDS[herd-warn]=$SERVER_PID
            SERVER_PID=$SERVER_PID_SAVE; LOGDIR=$LOGDIR_SAVE
            sides+=(warn "CFG=$TMP/herd-warn.json herd_round")
        fi
        if [[ $TLS_ROWS == 1 ]]; then
            SERVER_PID_SAVE=$SERVER_PID; LOGDIR_SAVE=$LOGDIR; LOGDIR=$TMP/logs/tls
            TLS_SAVE=$TLS_DIR; TLS_DIR=$TMP/tls
            start_herd default ""; cp "$CFG" "$TMP/herd-tlsh.json"; PIDS[herd-tls]=$SERVER_PID
            TLS_DIR=$TLS_SAVE; SERVER_PID=$SERVER_PID_SAVE; LOGDIR=$LOGDIR_SAVE
            sides+=(tls "CFG=$TMP/herd-tlsh.json herd_round")
        fi
        CFG=$base_cfg
        interleave "${sides[@]}"
        [[ $WARN_ROWS == 1 ]] && side_row warn order=30.5 "figure=T4: same, RUST_LOG=warn" "ref=${VALS[herd]}" unit=/s \
            "ref_label=same with default logging, rounds interleaved" kind=info "target_text=(logging cost)" "note=two herds running side by side, rounds alternating$(notes warn herd)"
        [[ $TLS_ROWS == 1 ]] && side_row tls order=30.8 "figure=T4: same, TLS 1.3 on every peer link" "ref=${VALS[herd]}" unit=/s \
            "ref_label=same without TLS, rounds interleaved" kind=info "target_text=(TLS cost)" "note=herd-cli certs; \"tls\" in the config$(notes tls herd)"
        stop_pid "${PIDS[herd-warn]:-}"; unset "PIDS[herd-warn]"
        stop_pid "${PIDS[herd-tls]:-}"; unset "PIDS[herd-tls]"
        stop_herd
    fi
}

stats_sum() { # stats_sum FIELD: sum over the servers of the current stats
    "${TOOLS[@]}" stats "$CFG" | python3 -c "import json,sys; print(sum(s['$1'] for s in json.load(sys.stdin).values()))"
}

bench_flood_count() { # T6: exactly N distinct new clients, one IAMAT each, on warmed trees
    local n=1000 name u0 i0 u1 i1 s0 s1 a0 a1 b0 b1 m0 m1 p0 p1 g0 g1 check=ok
    cpu_mark
    # Each origin's first records flood once to build its broadcast tree (docs/peer-protocol.md,
    # Broadcast tree): warm every origin first, so the figure is the steady state.
    for name in Goloman Hands Holiday Welsh Wilkes; do
        "${TOOLS[@]}" gen-iamats "$TMP/warm.txt" "warm-$name" 20
        timeout 60 "$CLI" --config "$CFG" --to "$name" send <"$TMP/warm.txt" >/dev/null ||
            die "herd-cli send to $name failed"
    done
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >/dev/null
    u0=$(stats_sum updates_sent); i0=$(stats_sum iamats); s0=$(stats_sum stored)
    a0=$(stats_sum announcements_sent); b0=$(stats_sum announce_bytes_sent); m0=$(stats_sum announce_messages_sent)
    p0=$(stats_sum prunes_sent); g0=$(stats_sum grafts_sent)
    for name in Goloman Hands Holiday Welsh Wilkes; do
        "${TOOLS[@]}" gen-iamats "$TMP/flood.txt" "flood-$name" "$n"
        timeout 60 "$CLI" --config "$CFG" --to "$name" send <"$TMP/flood.txt" >/dev/null ||
            die "herd-cli send to $name failed"
    done
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >"$TMP/q.json"
    [[ $(jq -r .converged "$TMP/q.json") == true ]] || check="servers differ after the flood"
    u1=$(stats_sum updates_sent); i1=$(stats_sum iamats); s1=$(stats_sum stored)
    a1=$(stats_sum announcements_sent); b1=$(stats_sum announce_bytes_sent); m1=$(stats_sum announce_messages_sent)
    p1=$(stats_sum prunes_sent); g1=$(stats_sum grafts_sent)
    [[ $((i1 - i0)) == $((5 * n)) ]] || check="expected $((5 * n)) new IAMATs, counted $((i1 - i0))"
    [[ $((s1 - s0)) == $((25 * n)) ]] || check="expected every server to store $((5 * n)) records, stored $((s1 - s0)) in all"
    row order=55 "figure=T6: peer payload messages per update (idle herd, trees warmed, $((5 * n)) new clients, $n at each server)" \
        "herd=$(python3 -c "print(($u1-$u0)/($i1-$i0))")" kind=eq target=4 "target_text=servers − 1 = 4 (flooding: 2 × 6 links − (5 − 1) = 8)" "check=$check" \
        "note=Δ sum(updates_sent) = $((u1 - u0)) over Δ sum(iamats) = $((i1 - i0)); every server stored each record once (Δ stored = $((s1 - s0))); prunes $((p1 - p0)), grafts $((g1 - g0))"
    row order=55.2 "figure=T6 (extra): lazy announcements per update, and their bytes" \
        "herd=$(python3 -c "print(round(($a1-$a0)/($i1-$i0), 2))")" kind=info "target_text=(2 × 6 links − 2 × (5 − 1) = 4 when every lazy link announces)" \
        "note=$((a1 - a0)) announcements in $((m1 - m0)) I lines, $(python3 -c "print(round(($b1-$b0)/($i1-$i0), 1))") bytes per update (a U line is about 100)"
    trim_logs
}

bench_fence_idle() { # the issue's idle event latency: fences at Hands, IAMATs to Welsh (3 hops)
    cpu_mark
    local rc=0 p50 p99 n
    timeout 120 "$CLI" --config "$CFG" load --to Welsh --rate 2000 -c 1 -d 1 --duration "$((ROUND_S * 2))s" \
        --fresh -k 10000 --area "$AREA_KM" --fences 100 --fence-km 1 --fence-to Hands --prefix fidle \
        --json >"$TMP/fi.json" 2>"$TMP/fi.err" || rc=$?
    p50=$(jq -r '.fences.latency_us.p50 // empty' "$TMP/fi.json" 2>/dev/null || true)
    p99=$(jq -r '.fences.latency_us.p99 // empty' "$TMP/fi.json" 2>/dev/null || true)
    n=$(jq -r '.fences.matched // 0' "$TMP/fi.json" 2>/dev/null || echo 0)
    local broken=""
    [[ $rc == 0 && -n $p99 && $n -gt 0 ]] || broken="load --fences failed (exit $rc): $(tail -c 200 "$TMP/fi.err")"
    row order=44 "figure=fence event latency, idle herd: IAMAT acknowledged by Welsh → ENTER/EXIT at Hands (3 hops), p99" \
        "herd=$p99" unit=us kind=abs_le target=2000 "target_text=≤ 2 ms" "broken=$broken" \
        "note=herd-cli load --to Welsh --rate 2000 -c 1 -d 1 --area $AREA_KM with 100 fences of 1 km at Hands (--fence-to Hands); p50 $p50 µs over $n events matched to their IAMAT"
    trim_logs
}

probe_json() { # probe_json OUT: Welsh → Hands
    timeout 300 "$CLI" --config "$CFG" probe Welsh Hands -r "$PROBE_ROUNDS" --json >"$1" ||
        die "herd-cli probe failed: $(cat "$1")"
}

bench_probe_idle() {
    local hops p50 p99 extra
    cpu_mark
    hops=$("${TOOLS[@]}" hops "$CFG" Welsh Hands)
    [[ $(echo "$hops" | jq .hops) == 3 ]] || die "Welsh–Hands is not 3 hops: $hops"
    probe_json "$TMP/p.json"
    p50=$(jq -r .propagation_us.p50 "$TMP/p.json"); p99=$(jq -r .propagation_us.p99 "$TMP/p.json")
    extra="$PROBE_ROUNDS rounds; shortest paths $(echo "$hops" | jq -r '.paths|join(", ")'); IAMAT round trip p50 $(printf '%.0f' "$(jq -r .iamat_rtt_us_p50 "$TMP/p.json")") µs, WHATSAT round trip p50 $(printf '%.0f' "$(jq -r .whatsat_rtt_us_p50 "$TMP/p.json")") µs (the figure includes up to one WHATSAT round trip at Hands)"
    row order=40 "figure=T5: propagation Welsh → Hands (3 hops), idle, p50" "herd=$p50" unit=us kind=abs_le \
        target=300 "target_text=≤ 300 µs" "note=$extra"
    row order=42 "figure=T5: propagation Welsh → Hands (3 hops), idle, p99" "herd=$p99" unit=us kind=abs_le \
        target=1000 "target_text=≤ 1 ms"
    trim_logs
}

bench_probe_loaded() { # p99 with a background load paced at half the herd's maximum
    local half i bg_rate p99 p50 bg_errs
    cpu_mark
    half=$(python3 -c "print(max(1, round($HERD_MAX / 2)))")
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >/dev/null
    "$CLI" --config "$CFG" load --all -c "$CONNS" -d 16 --threads 1 --rate "$half" --duration "${BG_S}s" --fresh -k "$KEYS" \
        --json >"$TMP/bg.json" 2>"$TMP/bg.err" &
    BG_PID=$!
    sleep 0.5
    probe_json "$TMP/p.json"
    kill -INT "$BG_PID" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$BG_PID" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$BG_PID"; BG_PID=""
    bg_rate=$(jq -r .requests_per_s "$TMP/bg.json" 2>/dev/null || echo 0)
    bg_errs=$(jq -r '[.errors[]]|add' "$TMP/bg.json" 2>/dev/null || echo unknown)
    p99=$(jq -r .propagation_us.p99 "$TMP/p.json"); p50=$(jq -r .propagation_us.p50 "$TMP/p.json")
    row order=44 "figure=T5: propagation Welsh → Hands, p99 under half of the maximum load" "herd=$p99" unit=us \
        kind=abs_le target=10000 "target_text=≤ 10 ms" \
        "note=background herd-cli load --all --fresh -c $CONNS -d 16 --threads 1 --rate $half (half of the T4 median) ran at $(printf '%.0f' "$bg_rate")/s (load errors: $bg_errs); p50 under load $(printf '%.0f' "$p50") µs; $PROBE_ROUNDS rounds"
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >/dev/null
    trim_logs
}

# ---- NEARBY and memory at NEAR_CLIENTS clients in a dense area ---------------------------

rss_bytes() { echo $(($(awk '/VmRSS/ {print $2}' "/proc/$1/status") * 1024)); }

near_round() { # near_round ADDR [--resp ...]: NEARBY (or GEOSEARCH) only; VAL = requests/s, XTRA = p50/p99 µs
    load_round --server "$1" load -c 1 -d 1 --duration "${ROUND_S}s" --nearby-ratio 1 --nearby-km 1 \
        --nearby-count 50 --area "$AREA_KM" -k "$NEAR_CLIENTS" --prefix near --no-warmup "${@:2}"
    XTRA=$(jq -r '"\(.nearby.latency_us.p50)/\(.nearby.latency_us.p99)"' "$TMP/l.json" 2>/dev/null || echo "")
}

bench_nearby() {
    local hb rb h1 r1 check=ok recs fill
    cpu_mark
    start_tagged near warn
    stop_pid "$REDIS_PID"; REDIS_PID=""; start_redis
    sleep 1   # the offline gazetteer is decoded in the background at start
    hb=$(rss_bytes "${PIDS[near]}"); rb=$(rss_bytes "$REDIS_PID")
    fill="load --warmup-only -k $NEAR_CLIENTS --area $AREA_KM --prefix near"
    timeout 600 "$CLI" --server "${ADDR_OF[near]}" $fill --json >"$TMP/w1.json" || die "filling herd failed: $(cat "$TMP/w1.json")"
    timeout 600 "$CLI" --server "127.0.0.1:$RPORT" $fill --resp --resp-key near --json >"$TMP/w2.json" || die "filling redis failed"
    recs=$("${TOOLS[@]}" stats "$TMP/herd-near.json" | jq -r .Goloman.records)
    [[ $recs == "$NEAR_CLIENTS" ]] || check="herd holds $recs records, expected $NEAR_CLIENTS"
    [[ $(redis-cli -p "$RPORT" zcard near) == "$NEAR_CLIENTS" ]] || check="redis holds $(redis-cli -p "$RPORT" zcard near) members"
    sleep 1
    h1=$(rss_bytes "${PIDS[near]}"); r1=$(rss_bytes "$REDIS_PID")
    local hpc rpc
    hpc=$(python3 -c "print(($h1-$hb)/$NEAR_CLIENTS)"); rpc=$(python3 -c "print(($r1-$rb)/$NEAR_CLIENTS)")
    row order=71 "figure=T7 (index): bytes per client above the empty process, $NEAR_CLIENTS clients in a ${AREA_KM} km square, nearby index on" \
        "herd=$hpc" "ref=$rpc" unit=B "ref_label=Redis GEOADD, same clients" kind=info "target_text=(herd vs Redis, same run)" "check=$check" \
        "note=VmRSS after the fill minus VmRSS of the freshly started process: herd $(python3 -c "print(round($hb/1e6,1))") → $(python3 -c "print(round($h1/1e6,1))") MB, Redis $(python3 -c "print(round($rb/1e6,1))") → $(python3 -c "print(round($r1/1e6,1))") MB (MB = 10^6 bytes); herd-cli load --warmup-only -k $NEAR_CLIENTS --area $AREA_KM to both (--resp for Redis); herd at RUST_LOG=warn (its log buffers are not store)"
    cpu_mark
    interleave nherd "near_round ${ADDR_OF[near]}" nredis "near_round 127.0.0.1:$RPORT --resp --resp-key near" \
        nrb "nearby_rb_round"
    local p50h p99h p50r p99r x
    p50h=""; p99h=""; for x in ${EXTRA[nherd]}; do p50h+=" ${x%/*}"; p99h+=" ${x#*/}"; done
    p50r=""; p99r=""; for x in ${EXTRA[nredis]}; do p50r+=" ${x%/*}"; p99r+=" ${x#*/}"; done
    local note="$NEAR_CLIENTS clients at random points of a ${AREA_KM} km square around UCLA (~$((NEAR_CLIENTS / (AREA_KM * AREA_KM))) per km², so ~$((NEAR_CLIENTS * 314 / (AREA_KM * AREA_KM * 100))) within 1 km of a point); herd-cli load --nearby-ratio 1 --nearby-km 1 --nearby-count 50 -c 1 -d 1 (one request at a time: the latency of one request, no queueing): NEARBY POINT <random point> 1 50 against herd, GEOSEARCH near FROMLONLAT <point> BYRADIUS 1 km COUNT 50 ASC against Redis (--resp), rounds interleaved"
    side_row nherd order=72 "figure=NEARBY at $NEAR_CLIENTS clients, radius 1 km, 50 results: requests/s" "ref=${VALS[nredis]}" unit=/s \
        "ref_label=Redis GEOSEARCH, same load generator" kind=info "target_text=(herd vs Redis)" "note=$note$(notes nherd nredis)"
    row order=73 "figure=NEARBY at $NEAR_CLIENTS clients: latency p50" "herd=$p50h" "ref=$p50r" unit=us "ref_label=Redis GEOSEARCH" kind=info "target_text=(lower is better)" "broken=${BROKEN[nherd]}"
    row order=74 "figure=NEARBY at $NEAR_CLIENTS clients: latency p99" "herd=$p99h" "ref=$p99r" unit=us "ref_label=Redis GEOSEARCH" kind=info "target_text=(lower is better)" "broken=${BROKEN[nherd]}"
    side_row nrb order=74.1 "figure=NEARBY (second opinion): Redis GEOSEARCH by redis-benchmark -c 8, at the area's centre" "ref=${VALS[nredis]}" unit=/s \
        "ref_label=Redis GEOSEARCH by herd-cli load --resp" kind=info "target_text=(the two load generators on one Redis)" "note=one fixed point, so every query finds the same clients$(notes nrb)"
    stop_tagged near
}

NRB_N=100
nearby_rb_round() { # redis-benchmark GEOSEARCH at the centre; -n sized from the last round to last ROUND_S
    local out
    VAL=0; ERRS=1
    out=$(timeout 120 redis-benchmark -p "$RPORT" -c 8 -n "$NRB_N" --csv \
        GEOSEARCH near FROMLONLAT "$LON" "$LAT" BYRADIUS 1 km COUNT 50 ASC 2>"$TMP/rb.err") || return 0
    VAL=$(printf '%s\n' "$out" | tail -1 | cut -d, -f2 | tr -d '"')
    [[ $VAL =~ ^[0-9.]+$ ]] || { VAL=0; return 0; }
    ERRS=0
    NRB_N=$(python3 -c "print(max(50, int(float('$VAL') * $ROUND_S)))")
}

# ---- fences ----------------------------------------------------------------------------

fence_round() { # fence_round ADDR [--fences ...]: IAMATs in the area; XTRA = fence event p99 µs
    load_round --server "$1" load -c "$CONNS" -d 16 --duration "${ROUND_S}s" --fresh -k "$KEYS" --area "$AREA_KM" "${@:2}"
    XTRA=$(jq -r '.fences.latency_us.p99 // empty' "$TMP/l.json" 2>/dev/null || true)
    local lost
    lost=$(jq -r '.fences.lost_connections // 0' "$TMP/l.json" 2>/dev/null || echo 0)
    [[ $lost == 0 ]] || ERRS=$((ERRS + lost))
}

bench_fences() {
    cpu_mark
    start_tagged fence warn
    local a=${ADDR_OF[fence]} probe_rc=0
    timeout 30 "$CLI" --server "$a" fence --count 0 bench-probe "+$LAT$LON" 1 >"$TMP/fp.out" 2>&1 || probe_rc=$?
    if [[ $probe_rc == 1 ]]; then
        local why="skipped: the server answers \`? FENCE\` (no FENCE support in this build: $(head -1 "$TMP/fp.out"))"
        row order=75 "figure=IAMAT throughput with $FENCES fences open on one server vs none" kind=skipped "note=$why"
        row order=76 "figure=fence event latency p99 (AT reply → ENTER/EXIT at the fence connection)" kind=skipped "note=$why"
        log "fence rows $why"
        stop_tagged fence
        return 0
    fi
    [[ $probe_rc == 0 ]] || die "herd-cli fence probe failed (exit $probe_rc): $(cat "$TMP/fp.out")"
    interleave none "fence_round $a" fenced "fence_round $a --fences $FENCES --fence-km $FENCE_KM --fences-per-conn 100"
    local note="herd-cli load -c $CONNS -d 16 --fresh -k $KEYS --area $AREA_KM (clients jump to random points of the ${AREA_KM} km square), with --fences $FENCES --fence-km $FENCE_KM on 100-fence subscriber connections to the same server, or none; rounds interleaved; server at RUST_LOG=warn"
    side_row fenced order=75 "figure=IAMAT throughput with $FENCES fences open on one server vs none" "ref=${VALS[none]}" unit=/s \
        "ref_label=same without fences" kind=info "target_text=(ratio: the cost of fences)" "note=$note$(notes none fenced)"
    row order=76 "figure=fence event latency p99 (AT reply → ENTER/EXIT at the fence connection), $FENCES fences" "herd=${EXTRA[fenced]}" unit=us kind=info \
        "broken=${BROKEN[fenced]}" "target_text=(median of the rounds' p99)" "note=each event matched to its IAMAT by client and client time (load --fences); last round: $(jq -c '.fences | {events, matched, unmatched, lost_connections}' "$TMP/l.json" 2>/dev/null)"
    stop_tagged fence
}

# ---- T7: memory --------------------------------------------------------------------------

bench_memory() {
    local base rss hwm recs check=ok
    cpu_mark
    start_herd single ""
    sleep 1   # the offline gazetteer may still be loading in the background
    base=$(rss_bytes "$SERVER_PID")
    [[ -s $TMP/mem.txt ]] || "${TOOLS[@]}" gen-iamats "$TMP/mem.txt" mem "$MEM_CLIENTS"
    timeout 300 "$CLI" --config "$CFG" --to Goloman send <"$TMP/mem.txt" >/dev/null ||
        die "herd-cli send of $MEM_CLIENTS IAMATs failed"
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >"$TMP/q.json"
    recs=$(jq -r .records.Goloman "$TMP/q.json")
    [[ $recs == "$MEM_CLIENTS" ]] || check="stats report $recs records, expected $MEM_CLIENTS"
    sleep 1   # let the log writer drain its buffers
    rss=$(rss_bytes "$SERVER_PID")
    hwm=$(($(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status") * 1024))
    row order=70 "figure=T7: resident memory, 1 server holding $MEM_CLIENTS clients" \
        "herd=$(python3 -c "print($rss/1e6)")" unit=MB kind=abs_le target=200 "target_text=≤ 200 MB (10^6 bytes)" \
        "check=$check" \
        "note=VmRSS after $MEM_CLIENTS distinct clients at one point (one IAMAT each, pipelined over one connection; stats: $recs records), default logging; VmRSS 1 s after start (empty store) $(python3 -c "print(round($base/1e6,1))") MB; peak VmHWM $(python3 -c "print(round($hwm/1e6,1))") MB"
    stop_herd
    rm -f "$LOGDIR"/*.log
}

# ---- T8: start-up ------------------------------------------------------------------------

bench_startup() {
    local try
    cpu_mark
    for try in 1 2 3; do
        CFG=$TMP/herd-startup.json
        "${TOOLS[@]}" config "$CFG" default "$REPO/deploy/herd.json"
        mkdir -p "$LOGDIR"
        env -u RUST_LOG "${TOOLS[@]}" startup "$CFG" "$SERVER" "$LOGDIR" "$STARTUP_RUNS" >"$TMP/s.json"
        [[ $(jq '.errors|length' "$TMP/s.json") == 0 ]] && break
        log "start-up run failed (try $try): $(jq -c .errors "$TMP/s.json")"
    done
    row order=80 "figure=T8: start-up, exec → first WHATSAT answered from the offline gazetteer" \
        "herd=$(jq -r '.whatsat_ms|join(" ")' "$TMP/s.json")" unit=ms kind=abs_le target=100 \
        "target_text=≤ 100 ms (the headline: the issue's 'with the gazetteer loaded')" \
        "note=one herd-server --all process (default logging, offline places), $STARTUP_RUNS runs, median: a Python loop spawns it, polls the ports with connect() every 0.5 ms, then sends an IAMAT and a WHATSAT (10 km, 1 item) to Goloman and reads the whole places answer; errors: $(jq -c .errors "$TMP/s.json")"
    row order=81 "figure=T8 (detail): start-up, exec → all 5 ports accepting" \
        "herd=$(jq -r '.ports_ms|join(" ")' "$TMP/s.json")" unit=ms kind=info \
        "target_text=(ports accept before the gazetteer is decoded)" "note=same runs"
    rm -f "$LOGDIR"/*.log
}

# ---- the load generator alone ------------------------------------------------------------

bench_echo() { # herd-cli load against herd-cli echo-server (a second process): the client's ceiling
    local p port i
    port=$("${TOOLS[@]}" ports 1)
    "$CLI" echo-server --listen "127.0.0.1:$port" >"$TMP/echo.out" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < 100; i++)); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), timeout=1).close()" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "herd-cli echo-server did not start: $(cat "$TMP/echo.out")"
        sleep 0.1
    done
    for p in 1 16; do
        cpu_mark
        interleave echo "load_round --server 127.0.0.1:$port load -c $CONNS -d $p --duration ${ROUND_S}s --fresh -k $KEYS"
        side_row echo "order=9$p" "figure=load generator against a trivial server (herd-cli echo-server), $CONNS conns, pipeline $p" \
            unit=/s kind=info "target_text=(for scale)" \
            "note=herd-cli echo-server in a second process answers each line at once: the same client, the same kernel path, no herd logic$(notes echo)"
    done
    stop_herd
}

# ---- the run ----------------------------------------------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "run: $COMMAND (temp dir $TMP)"
if [[ $TLS_ROWS == 1 ]]; then
    TLS_DIR=$TMP/tls
    "$CLI" certs --out "$TLS_DIR" >/dev/null || die "herd-cli certs failed"
    TLS_DIR=""
fi
start_redis
bench_single
bench_classic
stop_pid "$REDIS_PID"; REDIS_PID=""
bench_herd
bench_nearby
stop_pid "$REDIS_PID"; REDIS_PID=""
bench_fences
bench_memory
bench_startup
bench_echo

ELAPSED=$(($(date +%s) - T_START))
python3 - "$TMP/header.json" <<PY
import json, sys
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "nproc": "$(nproc)",
    "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')",
    "kernel": "$(uname -sr)",
    "commit": "$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO" && git diff --quiet HEAD -- herd-core herd-net herd-server herd-cli herd-places 2>/dev/null || echo ' (with uncommitted changes in the crates)')",
    "command": "$COMMAND",
    "settings": "$ROUNDS rounds of $ROUND_S s per throughput figure (classic rows: $CLASSIC_N connections per round), $PROBE_ROUNDS probe rounds, $STARTUP_RUNS start-up runs; redis $REDIS_VERSION; every herd and Redis row driven by herd-cli load (Redis with --resp), redis-benchmark as a second opinion; herd-server with --places offline; load generator, servers and redis share the same $(nproc) cores over loopback",
    "load_start": "$LOAD_START",
    "load_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "logging": "rows without a label run with the default logging (RUST_LOG unset = info: every client message and reply is logged, docs/client-protocol.md §5); rows labelled RUST_LOG=warn turn per-message logging off",
    "elapsed": "${ELAPSED} s",
}, open(sys.argv[1], "w"))
PY
"${TOOLS[@]}" render "$RESULTS_JSONL" "$TMP/header.json" >"$RESULTS_MD"
cat "$RESULTS_MD"
log "written $RESULTS_MD in ${ELAPSED} s"
