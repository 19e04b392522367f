#!/usr/bin/env bash
# Runs every server of a herd config as its own process.
#
# Usage: deploy/run-herd.sh [CONFIG] [herd-server options...]
#        deploy/run-herd.sh [herd-server options...]            (the default herd)
#        deploy/run-herd.sh [--config CONFIG] [herd-server options...]
#
# CONFIG defaults to deploy/herd.json (the default herd). Every other argument is given to
# each herd-server, e.g. --places offline, --log-dir DIR, --data-dir DIR; the server names
# come from the config.
#
# The servers start one after another: each must print its "listening on" line before the
# next one starts, so their start-up lines never interleave (and every line a server prints
# later is passed on whole). If one fails to start (its port is in use, it exits, or it is not
# up within RUN_HERD_START_TIMEOUT seconds), the script names it, stops the ones already
# started, waits for them and exits 1. Once all are up, a server that exits on its own is
# named with its exit status and the others keep running. Ctrl-C (SIGINT) or SIGTERM stops
# every server (SIGTERM to each) and waits until all have exited; a second one kills them
# (SIGKILL). Exit status: 0 when every server exited 0, else 1.
#
# Environment: HERD_SERVER_BIN, a herd-server binary to run (default: build one with
# `cargo build --release -p herd-server`); RUN_HERD_START_TIMEOUT, seconds each server has to
# start (default 30).
set -uo pipefail

me=run-herd
here="$(cd "$(dirname "$0")" && pwd)"
say() { printf '%s: %s\n' "$me" "$*" >&2; }
usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "$0"; }

config="$here/herd.json"
opts=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  config=$1
  shift
fi
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --config)
      [ $# -ge 2 ] || { say "--config needs a FILE"; exit 64; }
      config=$2
      shift 2
      ;;
    --config=*) config=${1#--config=}; shift ;;
    *) opts+=("$1"); shift ;;
  esac
done
start_timeout=${RUN_HERD_START_TIMEOUT:-30}
case $start_timeout in
  '' | *[!0-9]*) say "RUN_HERD_START_TIMEOUT must be a whole number of seconds"; exit 64 ;;
esac
[ -r "$config" ] || { say "cannot read the config $config"; exit 64; }

if [ -n "${HERD_SERVER_BIN:-}" ]; then
  bin=$HERD_SERVER_BIN
else
  cargo build --release -p herd-server --manifest-path "$here/../Cargo.toml" || exit 1
  bin="${CARGO_TARGET_DIR:-$here/../target}/release/herd-server"
fi
[ -x "$bin" ] || { say "no herd-server binary at $bin"; exit 1; }

names=$(python3 -c '
import json, sys
try:
    servers = json.load(open(sys.argv[1]))["servers"]
    assert isinstance(servers, dict) and servers
except Exception as e:
    sys.exit("run-herd: config %s: no \"servers\" object (%s)" % (sys.argv[1], e))
print(" ".join(servers))' "$config") || exit 64

tmp=$(mktemp -d "${TMPDIR:-/tmp}/run-herd.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

started=()   # names, in start order
declare -A pid_of fwd_of done_of
stopping=0
stop() {
  stopping=$((stopping + 1))
  local sig=TERM
  if [ "$stopping" -gt 1 ]; then sig=KILL; fi
  local n
  for n in "${started[@]}"; do
    if [ -z "${done_of[$n]:-}" ]; then kill -"$sig" "${pid_of[$n]}" 2>/dev/null; fi
  done
}
trap stop INT TERM

# Passes a server's stderr on line by line (one write per line, so lines of different servers
# never mix) and marks the server up at its "listening on" line. It ignores SIGINT and SIGTERM
# (a Ctrl-C reaches the whole process group) and ends when the server closes its stderr, so
# the server's last lines still get out (and its writes to stderr never fail).
forward() {
  trap '' INT TERM
  local name=$1 line
  while IFS= read -r line || [ -n "$line" ]; do
    printf '%s\n' "$line" >&2
    case $line in *" listening on "*) : >"$tmp/$name.up" ;; esac
  done
}

# Reaps a server that has exited (and its forwarder, so its last lines are out): sets `status`.
reap() {
  local name=$1
  wait "${pid_of[$name]}"
  status=$?
  wait "${fwd_of[$name]}" 2>/dev/null
  done_of[$name]=$status
}

alive() { kill -0 "${pid_of[$1]}" 2>/dev/null; }

# "; stopping A, B" for the servers started before `$1`, or nothing.
others() {
  local n list=()
  for n in "${started[@]}"; do
    if [ "$n" != "$1" ] && [ -z "${done_of[$n]:-}" ]; then list+=("$n"); fi
  done
  if [ "${#list[@]}" -gt 0 ]; then
    local IFS=,
    printf '; stopping %s' "${list[*]}" | sed 's/,/, /g'
  fi
}

failed=0
for name in $names; do
  [ "$stopping" -eq 0 ] || break
  mkfifo "$tmp/$name.err"
  "$bin" --config "$config" "${opts[@]}" "$name" 2>"$tmp/$name.err" </dev/null &
  pid_of[$name]=$!
  forward "$name" <"$tmp/$name.err" &
  fwd_of[$name]=$!
  started+=("$name")
  # Milliseconds: $SECONDS ticks in whole seconds, so a deadline on it can come early.
  deadline=$(( $(date +%s%3N) + start_timeout * 1000 ))
  while [ ! -e "$tmp/$name.up" ] && [ "$stopping" -eq 0 ]; do
    if ! alive "$name"; then
      reap "$name"
      say "server $name did not start (herd-server exited with status $status)$(others "$name")"
      failed=1
      break
    fi
    if [ "$(date +%s%3N)" -ge "$deadline" ]; then
      say "server $name did not start within ${start_timeout}s; stopping it$(others "$name")"
      failed=1
      break
    fi
    sleep 0.05
  done
  if [ "$failed" -eq 1 ]; then
    stop
    break
  fi
done

if [ "$failed" -eq 0 ] && [ "$stopping" -eq 0 ]; then
  say "${#started[@]} servers up ($names); Ctrl-C stops them all"
fi

# Wait for every server; name each one that exits with an error, or on its own.
while :; do
  running=0
  for name in "${started[@]}"; do
    [ -z "${done_of[$name]:-}" ] || continue
    if alive "$name"; then
      running=$((running + 1))
      continue
    fi
    reap "$name"
    if [ "$status" -ne 0 ]; then
      failed=1
      say "server $name exited with status $status"
    elif [ "$stopping" -eq 0 ]; then
      say "server $name exited (status 0)"
    else
      say "server $name stopped"
    fi
  done
  [ "$running" -gt 0 ] || break
  sleep 0.1
done
if [ "$stopping" -gt 0 ] && [ "$failed" -eq 0 ]; then say "all servers stopped"; fi
exit "$failed"
