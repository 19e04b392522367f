#!/usr/bin/env bash
# Builds statically linked herd-server and herd-cli and the container image from them.
#
#   deploy/container/build.sh                 # image herd:<version> and herd:latest
#   HERD_IMAGE=registry.example/herd:1 deploy/container/build.sh
#
# The binaries: x86_64-unknown-linux-musl when that target can be added and musl-gcc is there
# (Debian: musl-tools; ring's C and assembly are compiled with it), else glibc linked
# statically (crt-static). HERD_STATIC_TARGET=musl|glibc forces one. The engine: podman, else
# docker (HERD_ENGINE forces one). The image is FROM scratch, so nothing is pulled.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
image="${HERD_IMAGE:-localhost/herd:$version}"

say() { echo "build.sh: $*" >&2; }

musl_ready() {
  command -v musl-gcc >/dev/null || { say "musl-gcc not found (install musl-tools)"; return 1; }
  if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    timeout 300 rustup target add x86_64-unknown-linux-musl >&2 ||
      { say "cannot add the musl target"; return 1; }
  fi
}

kind="${HERD_STATIC_TARGET:-}"
if [ -z "$kind" ]; then
  if musl_ready; then kind=musl; else kind=glibc; say "falling back to glibc with crt-static"; fi
fi
case "$kind" in
  musl)
    triple=x86_64-unknown-linux-musl
    export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
    cargo build --release --locked --manifest-path "$root/Cargo.toml" \
      --target "$triple" -p herd-server -p herd-cli >&2
    ;;
  glibc)
    triple=x86_64-unknown-linux-gnu
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
      cargo build --release --locked --manifest-path "$root/Cargo.toml" \
      --target "$triple" -p herd-server -p herd-cli >&2
    ;;
  *) say "HERD_STATIC_TARGET must be musl or glibc, not $kind"; exit 64 ;;
esac
bin="$target_dir/$triple/release"

# The image has no loader: refuse a binary that needs one.
for b in herd-server herd-cli; do
  if readelf -l "$bin/$b" | grep -q 'Requesting program interpreter'; then
    say "$bin/$b is dynamically linked"; exit 1
  fi
done

ctx="$target_dir/container-context"
rm -rf "$ctx"
mkdir -p "$ctx/empty"
cp "$here/Containerfile" "$here/passwd" "$here/group" "$ctx/"
cp "$bin/herd-server" "$bin/herd-cli" "$ctx/"
strip "$ctx/herd-server" "$ctx/herd-cli" 2>/dev/null || true

engine="${HERD_ENGINE:-}"
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman
  elif command -v docker >/dev/null; then engine=docker
  else say "no container engine (podman or docker); the binaries are in $bin"; exit 69
  fi
fi
format=()
if [ "$engine" = podman ]; then format=(--format docker); fi # keeps HEALTHCHECK
"$engine" build "${format[@]}" -f "$ctx/Containerfile" -t "$image" "$ctx" >&2
size=$("$engine" image inspect "$image" --format '{{.Size}}')
say "built $image ($kind static binaries, image $((size / 1024 / 1024)) MiB)"
echo "$image"
