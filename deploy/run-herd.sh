#!/usr/bin/env bash
# Runs every server of a herd config as its own process; Ctrl-C (or SIGTERM) stops them all.
# Usage: deploy/run-herd.sh [CONFIG] [extra herd-server options...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
config="${1:-$here/herd.json}"
shift || true
cargo build --release -p herd-server --manifest-path "$here/../Cargo.toml"
bin="$here/../target/release/herd-server"
if [ -n "${CARGO_TARGET_DIR:-}" ]; then bin="$CARGO_TARGET_DIR/release/herd-server"; fi
names=$(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["servers"]))' "$config")
pids=()
for name in $names; do
  "$bin" --config "$config" "$@" "$name" &
  pids+=("$!")
done
stop() { kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap stop INT TERM
wait
