#!/usr/bin/env bash
# herd benchmark (issue 6): every figure of the issue in one run on one machine, written
# as a Markdown table to bench/results.md and printed. See bench/README.md.
#
#   bench/run.sh              full run (about 4–5 minutes on 2 cores, build included when incremental)
#   QUICK=1 bench/run.sh      quick run (under 3 minutes)
#
# Environment (defaults in brackets, QUICK values after the slash):
#   ROUNDS [5/3]         rounds per throughput figure (median reported)
#   ROUND_S [3/1]        seconds per throughput round
#   PROBE_ROUNDS [300/100] propagation probe rounds
#   STARTUP_RUNS [10/5]  start-up runs
#   MEM_CLIENTS [1000000] clients stored for the memory figure
#   WARN_ROWS [1]        also measure with RUST_LOG=warn (per-message logging off)
#   JOURNAL_ROWS [1]     also measure T1/T2 with the journal on (--data-dir; durability cost)
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
    ROUNDS=${ROUNDS:-3}; ROUND_S=${ROUND_S:-1}; PROBE_ROUNDS=${PROBE_ROUNDS:-100}
    STARTUP_RUNS=${STARTUP_RUNS:-5}; BG_S=${BG_S:-15}
else
    ROUNDS=${ROUNDS:-5}; ROUND_S=${ROUND_S:-3}; PROBE_ROUNDS=${PROBE_ROUNDS:-300}
    STARTUP_RUNS=${STARTUP_RUNS:-10}; BG_S=${BG_S:-30}
fi
MEM_CLIENTS=${MEM_CLIENTS:-1000000}
WARN_ROWS=${WARN_ROWS:-1}
JOURNAL_ROWS=${JOURNAL_ROWS:-1}
TLS_ROWS=${TLS_ROWS:-1}
TLS_DIR=""   # set while the herds started carry TLS on their peer links
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS_MD=${RESULTS:-$HERE/results.md}
KEEP_TMP=${KEEP_TMP:-0}
CONNS=64
KEYS=100000
LON=-118.445127
LAT=34.068930
COMMAND="QUICK=$QUICK ROUNDS=$ROUNDS ROUND_S=$ROUND_S PROBE_ROUNDS=$PROBE_ROUNDS STARTUP_RUNS=$STARTUP_RUNS MEM_CLIENTS=$MEM_CLIENTS WARN_ROWS=$WARN_ROWS JOURNAL_ROWS=$JOURNAL_ROWS TLS_ROWS=$TLS_ROWS bench/run.sh"
T_START=$(date +%s)

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- temp dir, processes, cleanup -------------------------------------------------------

TMP=$(mktemp -d /tmp/herd-bench.XXXXXX)
SERVER_PID=""
SERVER_ARGS=()   # extra herd-server options for the next start_herd (e.g. --data-dir)
REDIS_PID=""
BG_PID=""

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
    stop_pid "$BG_PID"
    stop_pid "$SERVER_PID"
    stop_pid "$REDIS_PID"
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

start_redis() {
    local try
    for try in 1 2 3; do
        RPORT=$("${TOOLS[@]}" ports 1)
        # Several loopback addresses: each connection-per-request round dials a different one,
        # so the previous rounds' TIME_WAIT sockets do not exhaust the ephemeral ports.
        redis-server --port "$RPORT" --bind 127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4 127.0.0.5 \
            127.0.0.6 127.0.0.7 127.0.0.8 --save '' --appendonly no \
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
REDIS_ERRORS=""
redis_round() { # redis_round PIPELINE [extra options...]: one round, sets RED (GEOADD/s)
    local p=$1; shift
    local key="$p $*"
    local n=${REDIS_N[$key]:-$((p == 1 ? 100000 * ROUND_S : 500000 * ROUND_S))}
    local host=127.0.0.1
    if [[ $* == *"-k 0"* ]]; then
        # A new connection per request: at most 20000 per round (ephemeral ports), and a
        # destination address of its own per round.
        ((n > 20000)) && n=20000
        REDIS_HOSTNO=$(((${REDIS_HOSTNO:-1} % 7) + 2))
        host=127.0.0.$REDIS_HOSTNO
    fi
    local out rate
    RED=""
    if ! out=$(timeout 120 redis-benchmark -h "$host" -p "$RPORT" -c "$CONNS" -P "$p" -n "$n" \
        -r "$KEYS" "$@" --csv GEOADD key "$LON" "$LAT" "member:__rand_int__" 2>"$TMP/rb.err"); then
        REDIS_ERRORS+=" $(grep -v WARNING "$TMP/rb.err" | tail -1 | tr -s ' ' | cut -c1-120)"
        REDIS_ERRORS+=" (exit status: failed);"
        log "redis-benchmark failed: $(tr '\n' ' ' <"$TMP/rb.err" | cut -c1-300)"
        sleep 1
        return 0
    fi
    rate=$(printf '%s\n' "$out" | tail -1 | cut -d, -f2 | tr -d '"')
    [[ $rate =~ ^[0-9.]+$ ]] || { REDIS_ERRORS+=" unreadable output: ${out:0:80};"; return 0; }
    # Size the next round so it lasts about ROUND_S seconds.
    REDIS_N[$key]=$(python3 -c "print(max(20000, int(float('$rate') * $ROUND_S)))")
    [[ $* != *"-k 0"* ]] || REDIS_N[$key]=20000
    RED=$rate
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

wait_links() { # every server has all its links up (bounded: 15 s)
    [[ $1 -gt 1 ]] || return 0
    local i
    for ((i = 0; i < 150; i++)); do
        if python3 - "$CFG" <<'EOF'
import json, subprocess, sys
cfg = json.load(open(sys.argv[1]))
import os
stats = json.loads(subprocess.check_output(["python3", os.environ["BENCH_TOOLS"], "stats", sys.argv[1]]))
deg = {n: 0 for n in cfg["servers"]}
for a, b in cfg["links"]:
    deg[a] += 1; deg[b] += 1
sys.exit(0 if all(len(stats[n]["links_up"]) == deg[n] for n in deg) else 1)
EOF
        then return 0; fi
        sleep 0.1
    done
    die "herd links did not all come up within 15 s"
}
export BENCH_TOOLS=$HERE/tools.py

trim_logs() { # logs grow by tens of MB/s at info level: empty them between rounds
    local f
    for f in "$LOGDIR"/*.log; do [[ -e $f ]] && : >"$f"; done
    return 0
}

herd_load() { # herd_load OUTFILE ARGS...: one herd-cli load run (JSON summary in OUTFILE)
    local out=$1; shift
    timeout $((ROUND_S + 60)) "$CLI" --config "$CFG" "$@" --json >"$out" ||
        die "herd-cli load failed: $(cat "$out")"
}

load_errors() { "${TOOLS[@]}" json "$1" errors | python3 -c 'import json,sys; print(sum(json.load(sys.stdin).values()))'; }

RESULTS_JSONL=$TMP/results.jsonl
: >"$RESULTS_JSONL"
row() { "${TOOLS[@]}" row "$RESULTS_JSONL" "$@"; }

# ---- rows 1–3: one server against redis -------------------------------------------------

bench_single() { # bench_single LEVEL LABEL
    local level=$1 label=$2 p herd red errs_total=0 note
    start_herd single "$level"
    for p in 1 16; do
        REDIS_ERRORS=""
        local hv="" rv="" r
        for ((r = 1; r <= ROUNDS; r++)); do
            herd_load "$TMP/l.json" --to Goloman load -c "$CONNS" -d "$p" --duration "${ROUND_S}s" --fresh -k "$KEYS"
            herd=$("${TOOLS[@]}" json "$TMP/l.json" requests_per_s)
            errs_total=$((errs_total + $(load_errors "$TMP/l.json")))
            hv+=" $herd"; trim_logs
            if [[ -z $label ]]; then redis_round "$p"; red=$RED; rv+=" $red"; fi
            red=${red:-failed}
            log "one server, pipeline $p$label, round $r: herd $herd/s${red:+, redis $red/s}"
        done
        note="herd-cli load -c $CONNS -d $p --fresh -k $KEYS (every IAMAT stored); redis-benchmark -c $CONNS -P $p -r $KEYS GEOADD (redis $REDIS_VERSION); errors: $errs_total${REDIS_ERRORS:+; redis-benchmark failures (rounds left out): $REDIS_ERRORS}"
        if [[ -z $label ]]; then
            row "order=$p" "figure=T$((p == 1 ? 1 : 2)): 1 server, IAMAT, $CONNS conns, pipeline $p" "herd=$hv" "ref=$rv" unit=/s \
                "ref_label=Redis GEOADD" kind=ratio_ge target=1.0 "target_text=≥ 1.0× Redis" "note=$note"
            [[ $p == 1 ]] && SINGLE_P1="$hv" || SINGLE_P16="$hv"
        else
            local refv; [[ $p == 1 ]] && refv=$SINGLE_P1 || refv=$SINGLE_P16
            row "order=$p.5" "figure=T$((p == 1 ? 1 : 2)): 1 server, IAMAT, $CONNS conns, pipeline $p$label" "herd=$hv" "ref=$refv" unit=/s \
                "ref_label=same with default logging" kind=info "target_text=(logging cost)" "note=$note"
        fi
    done
    if [[ -z $label ]]; then
        local hv="" rv="" r herd red
        REDIS_ERRORS=""
        # Redis's connection-per-request rounds first: after herd-cli's classic rounds (which
        # spread over 64 loopback source addresses) the TIME_WAIT sockets leave
        # redis-benchmark, bound to one source address, no ephemeral port.
        for ((r = 1; r <= ROUNDS; r++)); do
            redis_round 1 -k 0; rv+=" $RED"
            log "one server, classic, round $r: redis -k 0 ${RED:-failed}/s"
        done
        for ((r = 1; r <= ROUNDS; r++)); do
            herd_load "$TMP/l.json" --to Goloman load --mode classic -c "$CONNS" --duration "${ROUND_S}s" --fresh -k "$KEYS"
            herd=$("${TOOLS[@]}" json "$TMP/l.json" requests_per_s)
            errs_total=$(load_errors "$TMP/l.json")
            hv+=" $herd"; trim_logs
            log "one server, classic, round $r: herd $herd/s (load errors $errs_total)"
        done
        row order=20 "figure=T3: 1 server, classic clients (connect, IAMAT, half-close, read), $CONNS at once" \
            "herd=$hv" "ref=$rv" unit=/s "ref_label=Redis GEOADD, -k 0: new connection per request" \
            kind=abs_ge target=25000 "target_text=≥ 25,000/s" \
            "note=herd-cli load --mode classic -c $CONNS; redis-benchmark -k 0 -c $CONNS (reference only: a redis client does not half-close and wait for the close; its rounds run before herd's, not interleaved)${REDIS_ERRORS:+; redis-benchmark failures (rounds left out): $REDIS_ERRORS}"
    fi
    stop_herd
}

single_variant_rows() { # ORDER LABEL REF_LABEL TARGET_TEXT NOTE: T1/T2 rows of a variant of the
    # running single server, each against the same run's row without the variant
    local order=$1 label=$2 ref_label=$3 target_text=$4 note=$5 p hv r herd refv errs_total=0
    for p in 1 16; do
        hv=""
        for ((r = 1; r <= ROUNDS; r++)); do
            herd_load "$TMP/l.json" --to Goloman load -c "$CONNS" -d "$p" --duration "${ROUND_S}s" --fresh -k "$KEYS"
            herd=$("${TOOLS[@]}" json "$TMP/l.json" requests_per_s)
            errs_total=$((errs_total + $(load_errors "$TMP/l.json")))
            hv+=" $herd"; trim_logs
            log "one server, pipeline $p, $label, round $r: herd $herd/s"
        done
        [[ $p == 1 ]] && refv=$SINGLE_P1 || refv=$SINGLE_P16
        row "order=$p.$order" "figure=T$((p == 1 ? 1 : 2)): 1 server, IAMAT, $CONNS conns, pipeline $p, $label" \
            "herd=$hv" "ref=$refv" unit=/s "ref_label=$ref_label" kind=info \
            "target_text=$target_text" \
            "note=$note; herd-cli load -c $CONNS -d $p --fresh -k $KEYS; errors: $errs_total"
    done
}

bench_journal() { # T1/T2 with the journal on: what write-before-reply durability costs
    rm -rf "$TMP/data"
    SERVER_ARGS=(--data-dir "$TMP/data")
    start_herd single ""
    SERVER_ARGS=()
    single_variant_rows 7 "journal on (--data-dir)" "same without journal" "(durability cost)" \
        "herd-server --data-dir: every stored record written to the journal before its reply (no fsync)"
    stop_herd
    rm -rf "$TMP/data"
}

bench_tls() { # T1/T2/T4 with TLS on every peer link, as ratios to the same rows without it
    local hv r herd errs_total=0 check=ok
    TLS_DIR=$TMP/tls
    "$CLI" certs --out "$TLS_DIR" >/dev/null || die "herd-cli certs failed"
    start_herd single ""
    single_variant_rows 8 "peer TLS configured" "same without TLS" \
        "(TLS cost; one server has no peer link, so this is the no-cost control)" \
        "herd-server with \"tls\" from herd-cli certs; clients speak plain TCP"
    stop_herd
    start_herd default ""
    hv=""; errs_total=0
    for ((r = 1; r <= ROUNDS; r++)); do
        herd_load "$TMP/l.json" load --all -c "$CONNS" -d 16 --duration "${ROUND_S}s" --fresh -k "$KEYS"
        herd=$("${TOOLS[@]}" json "$TMP/l.json" requests_per_s)
        errs_total=$((errs_total + $(load_errors "$TMP/l.json")))
        "${TOOLS[@]}" wait-quiet "$CFG" 60 >"$TMP/q.json"
        [[ $("${TOOLS[@]}" json "$TMP/q.json" converged) == True ]] || check="round $r: servers differ after the load"
        hv+=" $herd"; trim_logs
        log "herd over TLS peer links, round $r: $herd/s"
    done
    row "order=30.8" "figure=T4: whole herd (5 servers), pipeline 16 over all, TLS 1.3 on every peer link" \
        "herd=$hv" "ref=$HERD_T4" unit=/s "ref_label=same without TLS (T4 median)" kind=info \
        "target_text=(TLS cost)" "check=$check" \
        "note=herd-cli certs; \"tls\" in the config; stores compared after every round; load errors: $errs_total"
    stop_herd
    TLS_DIR=""
}

# ---- rows 4–6: the default herd ---------------------------------------------------------

stats_sum() { # stats_sum FIELD: sum over the servers of the current stats
    "${TOOLS[@]}" stats "$CFG" | python3 -c "import json,sys; print(sum(s['$1'] for s in json.load(sys.stdin).values()))"
}

bench_herd_throughput() { # bench_herd_throughput LEVEL LABEL: row 4 (+ flood ratio under load)
    local level=$1 label=$2 hv="" r herd check=ok u0 i0 u1 i1 ratios="" errs=0
    for ((r = 1; r <= ROUNDS; r++)); do
        u0=$(stats_sum updates_sent); i0=$(stats_sum iamats)
        herd_load "$TMP/l.json" load --all -c "$CONNS" -d 16 --duration "${ROUND_S}s" --fresh -k "$KEYS"
        herd=$("${TOOLS[@]}" json "$TMP/l.json" requests_per_s)
        errs=$((errs + $(load_errors "$TMP/l.json")))
        "${TOOLS[@]}" wait-quiet "$CFG" 60 >"$TMP/q.json"
        local conv quiet recs
        conv=$("${TOOLS[@]}" json "$TMP/q.json" converged)
        quiet=$("${TOOLS[@]}" json "$TMP/q.json" quiet)
        recs=$(jq -c "[.records[]]|unique" "$TMP/q.json")
        if [[ $conv != True || $quiet != True ]]; then
            check="round $r: servers differ after the load (quiet=$quiet, records $recs)"
        fi
        u1=$(stats_sum updates_sent); i1=$(stats_sum iamats)
        ratios+=" $(python3 -c "print(($u1-$u0)/max(1,$i1-$i0))")"
        hv+=" $herd"; trim_logs
        log "herd, pipelined over 5 servers$label, round $r: $herd/s, converged=$conv records=$recs"
    done
    HERD_MAX=$("${TOOLS[@]}" median $hv)
    [[ -n $label ]] || HERD_T4=$HERD_MAX   # the default-logging T4, the TLS row's reference
    row "order=30${label:+.5}" "figure=T4: whole herd (5 servers), new record per IAMAT, $CONNS conns × pipeline 16 spread over all$label" \
        "herd=$hv" unit=/s kind=abs_ge target=100000 "target_text=≥ 100,000/s and all stores equal" \
        "check=$check" ref=1000 "ref_label=best public Python asyncio herd: issue 6's figure, not run here" \
        "note=herd-cli load --all --fresh -k $KEYS -c $CONNS -d 16; after every round the five stats endpoints are polled until quiet and their records count and digest compared (record counts found on the five servers after the last round: $recs, digests equal: $conv); load errors: $errs"
    row "order=56${label:+.5}" "figure=T6 (extra): peer updates sent per new IAMAT, under that load$label" "herd=$ratios" kind=info \
        "target_text=(8 when no update is overtaken)" \
        "note=Δ sum(updates_sent) ÷ Δ sum(iamats) per round; under concurrent load a newer update of the same client can overtake an older one on another path, which then stops early, so this may be below 8"
}

bench_flood_count() { # row 6: exactly N distinct new clients, one IAMAT each
    local n=1000 name u0 i0 u1 i1 s0 s1 check=ok
    u0=$(stats_sum updates_sent); i0=$(stats_sum iamats); s0=$(stats_sum stored)
    for name in Goloman Hands Holiday Welsh Wilkes; do
        "${TOOLS[@]}" gen-iamats "$TMP/flood.txt" "flood-$name" "$n"
        timeout 60 "$CLI" --config "$CFG" --to "$name" send <"$TMP/flood.txt" >/dev/null ||
            die "herd-cli send to $name failed"
    done
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >"$TMP/q.json"
    [[ $("${TOOLS[@]}" json "$TMP/q.json" converged) == True ]] || check="servers differ after the flood"
    u1=$(stats_sum updates_sent); i1=$(stats_sum iamats); s1=$(stats_sum stored)
    [[ $((i1 - i0)) == $((5 * n)) ]] || check="expected $((5 * n)) new IAMATs, counted $((i1 - i0))"
    [[ $((s1 - s0)) == $((25 * n)) ]] || check="expected every server to store $((5 * n)) records, stored $((s1 - s0)) in all"
    local ratio
    ratio=$(python3 -c "print(($u1-$u0)/($i1-$i0))")
    row order=55 "figure=T6: peer messages per update (idle herd, $((5 * n)) new clients, $n at each server)" \
        "herd=$ratio" kind=eq target=8 "target_text=exactly 8 (2 × 6 links − (5 − 1))" "check=$check" \
        "note=Δ sum(updates_sent) = $((u1 - u0)) over Δ sum(iamats) = $((i1 - i0)); every server stored each record once (Δ stored = $((s1 - s0)))"
    trim_logs
}

probe_json() { # probe_json OUT: Welsh → Hands
    timeout 300 "$CLI" --config "$CFG" probe Welsh Hands -r "$PROBE_ROUNDS" --json >"$1" ||
        die "herd-cli probe failed: $(cat "$1")"
}

bench_probe_idle() { # bench_probe_idle LABEL
    local label=$1 hops p50 p99
    hops=$("${TOOLS[@]}" hops "$CFG" Welsh Hands)
    [[ $(echo "$hops" | jq .hops) == 3 ]] || die "Welsh–Hands is not 3 hops: $hops"
    probe_json "$TMP/p.json"
    p50=$("${TOOLS[@]}" json "$TMP/p.json" propagation_us.p50)
    p99=$("${TOOLS[@]}" json "$TMP/p.json" propagation_us.p99)
    local extra
    extra="$PROBE_ROUNDS rounds; shortest paths $(echo "$hops" | jq -r '.paths|join(", ")'); IAMAT round trip p50 $(printf '%.0f' "$("${TOOLS[@]}" json "$TMP/p.json" iamat_rtt_us_p50)") µs, WHATSAT round trip p50 $(printf '%.0f' "$("${TOOLS[@]}" json "$TMP/p.json" whatsat_rtt_us_p50)") µs (the figure includes up to one WHATSAT round trip at Hands)"
    row "order=40${label:+.5}" "figure=T5: propagation Welsh → Hands (3 hops), idle, p50$label" "herd=$p50" unit=us kind=abs_le \
        target=300 "target_text=≤ 300 µs" "ref_fixed=~6 ms over 2 hops (Python asyncio, issue 6)" "note=$extra"
    row "order=42${label:+.5}" "figure=T5: propagation Welsh → Hands (3 hops), idle, p99$label" "herd=$p99" unit=us kind=abs_le \
        target=1000 "target_text=≤ 1 ms"
    trim_logs
}

bench_probe_loaded() { # p99 with a background load paced at half the herd's maximum
    local half
    # herd-cli load --rate paces the whole run at exactly this many requests/s, spread evenly
    # over the connections (the same 64 × depth 16 as row 4, so only the rate differs).
    # --threads 1: the paced load needs well under a core, and one thread (no worker thread
    # beside it) takes less CPU and wakes less often on the cores it shares with the herd.
    half=$(python3 -c "print(max(1, round($HERD_MAX / 2)))")
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >/dev/null
    "$CLI" --config "$CFG" load --all -c "$CONNS" -d 16 --threads 1 --rate "$half" --duration "${BG_S}s" --fresh -k "$KEYS" \
        --json >"$TMP/bg.json" 2>"$TMP/bg.err" &
    BG_PID=$!
    sleep 0.5
    probe_json "$TMP/p.json"
    # Ctrl-C stops herd-cli load early and it still prints its summary.
    kill -INT "$BG_PID" 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$BG_PID" 2>/dev/null || break; sleep 0.1; done
    stop_pid "$BG_PID"; BG_PID=""
    local bg_rate p99 p50 bg_errs
    bg_rate=$("${TOOLS[@]}" json "$TMP/bg.json" requests_per_s 2>/dev/null || echo 0)
    bg_errs=$(load_errors "$TMP/bg.json" 2>/dev/null || echo "unknown")
    p99=$("${TOOLS[@]}" json "$TMP/p.json" propagation_us.p99)
    p50=$("${TOOLS[@]}" json "$TMP/p.json" propagation_us.p50)
    row order=44 "figure=T5: propagation Welsh → Hands, p99 under half of the maximum load" "herd=$p99" unit=us \
        kind=abs_le target=10000 "target_text=≤ 10 ms" \
        "note=background herd-cli load --all --fresh -c $CONNS -d 16 --threads 1 --rate $half (half of the row-4 median, $(printf '%.0f' "$HERD_MAX")/s) ran at $(printf '%.0f' "$bg_rate")/s over its run = $(python3 -c "print(round(100*$bg_rate/$HERD_MAX))")% of the maximum (load errors: $bg_errs); p50 under load $(printf '%.0f' "$p50") µs; $PROBE_ROUNDS rounds"
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >/dev/null
    trim_logs
}

# ---- row 7: memory ----------------------------------------------------------------------

bench_memory() { # bench_memory LEVEL LABEL
    local level=$1 label=$2 base rss hwm recs check=ok
    start_herd single "$level"
    sleep 1   # the offline gazetteer may still be loading in the background
    base=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
    [[ -s $TMP/mem.txt ]] || "${TOOLS[@]}" gen-iamats "$TMP/mem.txt" mem "$MEM_CLIENTS"
    timeout 300 "$CLI" --config "$CFG" --to Goloman send <"$TMP/mem.txt" >/dev/null ||
        die "herd-cli send of $MEM_CLIENTS IAMATs failed"
    "${TOOLS[@]}" wait-quiet "$CFG" 60 >"$TMP/q.json"
    recs=$("${TOOLS[@]}" json "$TMP/q.json" records.Goloman)
    [[ $recs == "$MEM_CLIENTS" ]] || check="stats report $recs records, expected $MEM_CLIENTS"
    sleep 1   # let the log writer drain its buffers
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$SERVER_PID/status")
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status")
    row "order=70${label:+.5}" "figure=T7: resident memory, 1 server holding $MEM_CLIENTS clients$label" \
        "herd=$(python3 -c "print($rss/1024)")" unit=MB kind=abs_le target=200 "target_text=≤ 200 MB" \
        "check=$check" \
        "note=VmRSS after $MEM_CLIENTS distinct clients (one IAMAT each, pipelined over one connection; stats: $recs records); VmRSS 1 s after start (empty store) $(python3 -c "print(round($base/1024,1))") MB; peak VmHWM $(python3 -c "print(round($hwm/1024,1))") MB"
    stop_herd
    rm -f "$LOGDIR"/*.log
}

# ---- row 8: start-up --------------------------------------------------------------------

bench_startup() {
    local try
    for try in 1 2 3; do
        CFG=$TMP/herd-startup.json
        "${TOOLS[@]}" config "$CFG" default "$REPO/deploy/herd.json"
        mkdir -p "$LOGDIR"
        env -u RUST_LOG "${TOOLS[@]}" startup "$CFG" "$SERVER" "$LOGDIR" "$STARTUP_RUNS" >"$TMP/s.json"
        [[ $(jq '.errors|length' "$TMP/s.json") == 0 ]] && break
        log "start-up run failed (try $try): $(jq -c .errors "$TMP/s.json")"
    done
    row order=80 "figure=T8: start-up, exec → all 5 ports accepting" \
        "herd=$(jq -r '.ports_ms|join(" ")' "$TMP/s.json")" unit=ms kind=abs_le target=100 \
        "target_text=≤ 100 ms" \
        "note=one herd-server --all process (default logging, offline places), $STARTUP_RUNS runs, median, polled with connect() every 0.5 ms from a Python loop that also spawned the process; errors: $(jq -c .errors "$TMP/s.json")"
    row order=81 "figure=T8: start-up, exec → first WHATSAT answered from the offline gazetteer" \
        "herd=$(jq -r '.whatsat_ms|join(" ")' "$TMP/s.json")" unit=ms kind=abs_le target=100 \
        "target_text=≤ 100 ms (the issue's 'with the gazetteer loaded')" \
        "note=same runs: after the ports accept, one connection to Goloman sends an IAMAT and a WHATSAT (10 km, 1 item) and reads the whole places answer; if the server loads the gazetteer after opening its ports, this row carries that wait"
    rm -f "$LOGDIR"/*.log
}

# ---- the load generator alone ------------------------------------------------------------

bench_echo() { # herd-cli load against herd-cli echo-server (a second process): the client's ceiling
    local p hv r rate port i
    port=$("${TOOLS[@]}" ports 1)
    "$CLI" echo-server --listen "127.0.0.1:$port" >"$TMP/echo.out" 2>&1 &
    SERVER_PID=$!
    for ((i = 0; i < 100; i++)); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), timeout=1).close()" 2>/dev/null && break
        kill -0 "$SERVER_PID" 2>/dev/null || die "herd-cli echo-server did not start: $(cat "$TMP/echo.out")"
        sleep 0.1
    done
    for p in 1 16; do
        hv=""
        for ((r = 1; r <= ROUNDS && r <= 3; r++)); do
            timeout $((ROUND_S + 60)) "$CLI" --server "127.0.0.1:$port" load -c "$CONNS" -d "$p" \
                --duration "${ROUND_S}s" --fresh -k "$KEYS" --json >"$TMP/e.json" ||
                die "herd-cli load against the echo server failed"
            rate=$("${TOOLS[@]}" json "$TMP/e.json" requests_per_s)
            hv+=" $rate"
        done
        row "order=9$p" "figure=load generator against a trivial server (herd-cli echo-server), $CONNS conns, pipeline $p" \
            "herd=$hv" unit=/s kind=info "target_text=(for scale)" \
            "note=herd-cli echo-server in a second process answers each line at once: the same client, the same kernel path, no herd logic; herd-server close to this figure is bound by the client and the kernel, not by its own work"
    done
    stop_herd
}

# ---- the run ----------------------------------------------------------------------------

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "run: $COMMAND (temp dir $TMP)"
start_redis

bench_single "" ""
[[ $WARN_ROWS == 1 ]] && bench_single warn ", RUST_LOG=warn"
[[ $JOURNAL_ROWS == 1 ]] && bench_journal
stop_pid "$REDIS_PID"; REDIS_PID=""

start_herd default ""
bench_herd_throughput "" ""
bench_flood_count
bench_probe_idle ""
bench_probe_loaded
stop_herd
if [[ $WARN_ROWS == 1 ]]; then
    start_herd default warn
    bench_herd_throughput warn ", RUST_LOG=warn"
    bench_probe_idle ", RUST_LOG=warn"
    stop_herd
fi

[[ $TLS_ROWS == 1 ]] && bench_tls

bench_memory "" ""
[[ $WARN_ROWS == 1 ]] && bench_memory warn ", RUST_LOG=warn"
bench_startup
bench_echo

ELAPSED=$(($(date +%s) - T_START))
python3 - "$TMP/header.json" <<EOF
import json, sys
json.dump({
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "nproc": "$(nproc)",
    "cpu": "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')",
    "kernel": "$(uname -sr)",
    "commit": "$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$REPO" && git diff --quiet HEAD -- herd-core herd-net herd-server herd-cli herd-places 2>/dev/null || echo ' (with uncommitted changes in the crates)')",
    "command": "$COMMAND",
    "settings": "$ROUNDS rounds of $ROUND_S s per throughput figure, $PROBE_ROUNDS probe rounds, $STARTUP_RUNS start-up runs; redis $REDIS_VERSION; herd-server with --places offline (the default without a key); load generator, servers and redis share the same $(nproc) cores over loopback",
    "load_start": "$LOAD_START",
    "load_end": "$(cut -d' ' -f1-3 /proc/loadavg)",
    "logging": "rows without a label run with the default logging (RUST_LOG unset = info: every client message and reply is logged, docs/client-protocol.md §5); rows labelled RUST_LOG=warn turn per-message logging off",
    "elapsed": "${ELAPSED} s",
}, open(sys.argv[1], "w"))
EOF
"${TOOLS[@]}" render "$RESULTS_JSONL" "$TMP/header.json" >"$RESULTS_MD"
cat "$RESULTS_MD"
log "written $RESULTS_MD in ${ELAPSED} s"
