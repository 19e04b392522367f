#!/usr/bin/env bash
# The container test: builds the image, runs deploy/compose.yaml's five servers as containers
# (podman run, arguments derived from the compose file by herdtest.py) on a private network,
# TLS on every peer link, and checks what a deployment needs:
#   1. every server becomes ready (and the image's HEALTHCHECK says healthy);
#   2. an IAMAT at Welsh is answered by Hands (the farthest, three links away) with a WHATSAT;
#   3. Goloman cut off the network while IAMATs keep arriving on both sides, healed: every
#      store holds the same records (same count and digest) within a few seconds;
#   4. Welsh killed (SIGKILL) and restarted while its only neighbour is cut off: its journal
#      volume gives it back its store; the neighbour back, the herd agrees again.
# Everything it starts (containers, network, volumes) carries its own prefix and is removed at
# exit, whatever happens. Skips (exit 0, with a SKIP line) only when no container engine can
# run here; HERD_CONTAINER_TEST=require turns that skip into a failure.
#
#   deploy/container/test.sh            (HERD_IMAGE=... uses that image instead of building)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
deploy="$(cd "$here/.." && pwd)"
compose="$deploy/compose.yaml"
helper=(python3 "$here/herdtest.py")
prefix="herdtest-$$"
net="$prefix-net"
T0=$(date +%s)

dump_logs() {
  set +e
  [ -n "${services:-}" ] && podman ps -a --filter "label=herd-test=$prefix" --format '{{.Names}} {{.Status}}' >&2
  for svc in ${services:-}; do
    local mp
    mp=$(podman volume inspect -f '{{.Mountpoint}}' "$prefix-$svc" 2>/dev/null) || continue
    echo "--- last lines of $svc's logs:" >&2
    tail -n 15 "$mp"/logs/*.log 2>/dev/null >&2
    podman logs --tail 5 "$prefix-$svc" >&2 2>&1
  done
}

say() { echo "container test [$(($(date +%s) - T0))s]: $*"; }
fail() { echo "container test: FAIL: $*" >&2; dump_logs; exit 1; }
skip() {
  if [ "${HERD_CONTAINER_TEST:-}" = require ]; then fail "cannot run containers here: $*"; fi
  echo "container test: SKIP: no container engine can run here ($*)"
  exit 0
}

command -v podman >/dev/null || skip "podman is not installed (apt-get install -y podman runc)"
python3 -c 'import yaml' 2>/dev/null || fail "PyYAML is missing (pip install pyyaml)"
# runc where it is installed (crun fails on this project's machines on cgroups), and the
# explicit ulimits runc then needs (a compose service's own ulimits come later and win).
engine_flags=(--ulimit nofile=20000:20000 --ulimit nproc=1000:1000)
if command -v runc >/dev/null; then engine_flags+=(--runtime runc); fi

cleanup() {
  set +e
  podman ps -aq --filter "label=herd-test=$prefix" | xargs -r podman rm -f -t 0 >/dev/null 2>&1
  podman network rm -f "$net" >/dev/null 2>&1
  podman volume ls -q --filter "label=herd-test=$prefix" | xargs -r podman volume rm -f >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

image="${HERD_IMAGE:-}"
if [ -z "$image" ]; then
  say "building the image (deploy/container/build.sh)"
  image=$("$here/build.sh" | tail -n 1)
fi
podman image exists "$image" || fail "image $image not found"
if ! out=$(podman run --rm "${engine_flags[@]}" "$image" --version 2>&1); then
  skip "podman cannot start a container: $(echo "$out" | tail -n 1)"
fi
say "image $image runs ($(echo "$out" | grep "^herd-server" | tail -n 1))"

services=$("${helper[@]}" services "$compose")
[ "$(echo "$services" | wc -w)" = 5 ] || fail "compose.yaml should have five servers: $services"

# podman run for one compose service; extra podman options first.
run_service() {
  local svc=$1
  shift
  local args=()
  mapfile -d '' args < <("${helper[@]}" run-args "$compose" "$svc" "$prefix" "$net" "$image")
  podman run "${engine_flags[@]}" "$@" "${args[@]}"
}

# Runs the helper inside a container's network namespace (its loopback, on or off the
# network). The container's PID is looked up once per start (forget_pid after a restart).
declare -A pids=()
forget_pid() { unset "pids[$1]"; }
pid_of() {
  [ -n "${pids[$1]:-}" ] && return 0
  local pid
  pid=$(podman inspect -f '{{.State.Pid}}' "$prefix-$1") || return 1
  [ "$pid" != 0 ] || return 1
  pids[$1]=$pid
}
in_ns() {
  local svc=$1
  shift
  pid_of "$svc" || return 1
  nsenter -t "${pids[$svc]}" -n "${helper[@]}" "$@"
}

admin_addr=127.0.0.1:12100
client_addr=127.0.0.1:12000
stats() { in_ns "$1" stats "$admin_addr"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1"; }

# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every 0.2 s, at most SECONDS.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local tries=$((limit * 5))
  for ((i = 0; i < tries; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  fail "$what: not within ${limit}s"
}

say "network $net, certificates from the image's herd-cli into volume $prefix-tls"
podman network create --label "herd-test=$prefix" "$net" >/dev/null
for v in tls $services; do podman volume create --label "herd-test=$prefix" "$prefix-$v" >/dev/null; done
run_service certs --rm >/dev/null || fail "the certs service failed"

for svc in $services; do run_service "$svc" -d >/dev/null; done
user=$(podman inspect -f '{{.Config.User}}' "$prefix-welsh")
[ "$user" = "10001:10001" ] || fail "the image should run as 10001:10001, runs as $user"
grep -q "^Uid:[[:space:]]*10001" "/proc/$(podman inspect -f '{{.State.Pid}}' "$prefix-welsh")/status" ||
  fail "herd-server does not run as uid 10001"

# Ready: every link of the default herd up over TLS (Goloman has three neighbours, ...).
links_up() {
  local n
  n=$(stats "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["links_up"]))')
  [ "$n" = "$2" ]
}
declare -A degree=([goloman]=3 [hands]=2 [holiday]=3 [welsh]=1 [wilkes]=3)
for svc in $services; do
  wait_for 30 "$svc has its ${degree[$svc]} links up" links_up "$svc" "${degree[$svc]}"
done
say "five servers up, every link up (the config has TLS only: a link up is a TLS link)"
# Ready, and the image's HEALTHCHECK (herd-server --probe-ready) says so.
for svc in $services; do
  wait_for 10 "$svc's /readyz answers 200" in_ns "$svc" ready "$admin_addr"
  podman healthcheck run "$prefix-$svc" >/dev/null 2>&1 || fail "$svc's health check fails"
done
say "every /readyz 200, every health check healthy"

# 2. IAMAT at Welsh, WHATSAT at Hands.
secs() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}")' "$1" "$2"; }
now() { python3 -c 'import time; print(f"{time.time():.9f}")'; }
reply=$(in_ns welsh send "$client_addr" "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 $(now)")
case "$reply" in "AT Welsh "*) ;; *) fail "IAMAT at Welsh answered: $reply" ;; esac
at_line=$(echo "$reply" | head -n 1)
whatsat_matches() {
  local got
  got=$(in_ns hands send "$client_addr" "WHATSAT kiwi.cs.ucla.edu 10 2")
  [ "$(echo "$got" | head -n 1)" = "$at_line" ] && echo "$got" | grep -q '"status" : "OK"'
}
wait_for 10 "Hands answers the WHATSAT with Welsh's AT line" whatsat_matches
say "IAMAT at Welsh, WHATSAT at Hands: $at_line"

# 3. Cut Goloman off; IAMATs keep arriving on both sides; heal; every store the same.
# Every listed server holds $1 records with one digest (one process polls them all).
same_stores() {
  local want=$1 svc list=()
  shift
  for svc in "$@"; do
    pid_of "$svc" || return 1
    list+=("${pids[$svc]}")
  done
  "${helper[@]}" same "$admin_addr" "$want" "${list[@]}"
}
podman network disconnect "$net" "$prefix-goloman"
say "goloman cut off; IAMATs at welsh, hands and goloman"
# 20 IAMATs on one connection at each of the three.
iamats() {
  local id=$1 loc=$2 t
  t=$(now)
  for i in $(seq 1 20); do echo "IAMAT $id$i $loc $t"; done
}
for side in "welsh cut-w +10.000000-020.000000" "hands cut-h +11.000000-021.000000" \
  "goloman cut-g +12.000000-022.000000"; do
  read -r svc id loc <<<"$side"
  mapfile -t lines < <(iamats "$id" "$loc")
  got=$(in_ns "$svc" send "$client_addr" "${lines[@]}" | grep -c '^AT ')
  [ "$got" = 20 ] || fail "$svc answered $got of 20 IAMATs"
done
others=$(echo "$services" | grep -vx goloman | tr '\n' ' ')
# shellcheck disable=SC2086
wait_for 10 "the four connected servers agree during the cut" same_stores 41 $others
[ "$(stats goloman | field records)" = 21 ] || fail "cut-off goloman should hold 21 records"
podman network connect --alias goloman "$net" "$prefix-goloman"
heal_start=$(date +%s.%N)
wait_for 20 "goloman's links up again after the heal" links_up goloman 3
linked=$(date +%s.%N)
# shellcheck disable=SC2086
wait_for 20 "every store the same after the heal" same_stores 61 $services
say "healed: goloman relinked in $(secs "$heal_start" "$linked")s, every store holds the same 61 records $(secs "$heal_start" "$(date +%s.%N)")s after the heal"

# 4. Kill Welsh and restart it with its only neighbour (Holiday) cut off: only its journal
#    volume can give it its store back.
before=$(stats welsh)
podman kill -s KILL "$prefix-welsh" >/dev/null
podman wait "$prefix-welsh" >/dev/null 2>&1 || true
podman network disconnect "$net" "$prefix-holiday"
podman start "$prefix-welsh" >/dev/null
forget_pid welsh
wait_for 20 "welsh answers after the restart" stats welsh
after=$(stats welsh)
[ "$(echo "$after" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["links_up"]))')" = 0 ] ||
  fail "restarted welsh should have no link while holiday is cut off"
for f in records digest; do
  [ "$(echo "$before" | field $f)" = "$(echo "$after" | field $f)" ] ||
    fail "welsh's $f after the restart: $(echo "$after" | field $f), before: $(echo "$before" | field $f)"
done
grep -q "journal restored.*records=61" "$(podman volume inspect -f '{{.Mountpoint}}' "$prefix-welsh")/logs/Welsh.log" ||
  fail "welsh's log has no 'journal restored ... records=61' line"
say "welsh killed and restarted alone: its journal restored all $(echo "$after" | field records) records"
# Not ready without a neighbour to reconcile with: /readyz 503, the health check fails.
if ready=$(in_ns welsh ready "$admin_addr"); then fail "welsh is ready with no neighbour: $ready"; fi
case "$ready" in "503 not ready:"*) ;; *) fail "welsh's /readyz: $ready" ;; esac
if podman healthcheck run "$prefix-welsh" >/dev/null 2>&1; then
  fail "welsh's health check passes while it is not ready"
fi
say "restarted welsh alone is not ready ($ready), its health check fails"
podman network connect --alias holiday "$net" "$prefix-holiday"
in_ns welsh send "$client_addr" "IAMAT after-restart +13.000000-023.000000 $(now)" >/dev/null
# shellcheck disable=SC2086
wait_for 20 "every store the same after welsh rejoins" same_stores 62 $services
wait_for 20 "welsh ready again" in_ns welsh ready "$admin_addr"
podman healthcheck run "$prefix-welsh" >/dev/null 2>&1 || fail "welsh's health check fails once ready"
say "holiday back, welsh rejoined and ready: every store holds the same 62 records"

say "PASS"
