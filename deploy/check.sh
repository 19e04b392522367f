#!/usr/bin/env bash
# Offline checks of deploy/: the systemd unit (systemd-analyze verify, any warning fails), the
# Kubernetes manifests against the Kubernetes schemas (kubernetes-validate --strict, schemas
# bundled: no cluster, no network), the secrets script's output, and the herd configs the
# manifests and compose carry (herd-server --check-config).
#   deploy/check.sh [HERD_SERVER [HERD_CLI]]   (default: target/debug's binaries)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
server="${1:-$root/target/debug/herd-server}"
cli="${2:-$root/target/debug/herd-cli}"
k8s_version=1.30.0 # the oldest release these manifests are for (preStop sleep)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "deploy check: FAIL: $*" >&2; exit 1; }

echo "-- systemd: herd-server@.service, installed as deploy/README.md says, verified"
sysroot="$tmp/root"
mkdir -p "$sysroot/etc/systemd/system" "$sysroot/usr/local/bin" "$sysroot/usr/lib/systemd" "$sysroot/bin"
cp -a /lib/systemd/system "$sysroot/usr/lib/systemd/" # the targets the unit is ordered after
cp /bin/kill "$sysroot/bin/kill" # the unit's ExecReload
install -m 755 "$server" "$sysroot/usr/local/bin/herd-server"
cp "$here/herd-server@.service" "$sysroot/etc/systemd/system/"
for instance in Welsh Hands; do
  out=$(systemd-analyze verify --root="$sysroot" "/etc/systemd/system/herd-server@$instance.service" 2>&1) ||
    fail "systemd-analyze verify herd-server@$instance: $out"
  [ -z "$out" ] || fail "systemd-analyze verify herd-server@$instance warns: $out"
done
unit="$here/herd-server@.service"
grep -qx 'RestartPreventExitStatus=64' "$unit" || fail "the unit must not restart on exit 64"
# shellcheck disable=SC2016 # $MAINPID is systemd's, literally
grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$unit" || fail "ExecReload must send SIGHUP"
grep -q -- '--data-dir /var/lib/herd/%i --log-dir /var/log/herd/%i' "$unit" ||
  fail "every instance needs its own state and log directory"
for d in StateDirectory LogsDirectory; do
  grep -qx "$d=herd/%i" "$unit" || fail "$d must be per instance (herd/%i)"
done

echo "-- Kubernetes: manifests against the $k8s_version schemas (strict: unknown fields fail)"
HERD_ADMIN_TOKEN=ci-token PLACES_API_KEY=ci-key HERD_CLI="$cli" \
  "$here/k8s/make-secrets.sh" "$tmp/tls" "$tmp/secrets.yaml"
kubernetes-validate --strict --quiet -k "$k8s_version" "$here"/k8s/*.yaml "$tmp/secrets.yaml" ||
  fail "kubernetes-validate"
python3 - "$tmp/secrets.yaml" "$here/k8s/configmap.yaml" <<'PY' || fail "secrets.yaml does not match the config"
import json, subprocess, sys, yaml
secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(open(sys.argv[1]))}
config = json.loads(subprocess.check_output([sys.executable, sys.argv[2].replace("configmap.yaml", "configmap_json.py"), sys.argv[2]]))
want = {"ca.pem"} | {f"{n}.{e}" for n in config["servers"] for e in ("pem", "key")}
assert set(secrets["herd-tls"]["data"]) == want, sorted(secrets["herd-tls"]["data"])
assert set(secrets["herd-keys"]["data"]) == {"admin-token", "places-api-key"}
PY

echo "-- herd configs of the manifests and of compose pass herd-server --check-config"
python3 "$here/k8s/configmap_json.py" "$here/k8s/configmap.yaml" > "$tmp/k8s-herd.json"
has_check=yes
for c in "$tmp/k8s-herd.json" "$here/herd-container.json" "$here/herd.json"; do
  if ! out=$(HERD_ADMIN_TOKEN=ci-token "$server" --check-config --config "$c" 2>&1); then
    if echo "$out" | grep -q "unexpected argument '--check-config'"; then
      echo "   this herd-server has no --check-config: the configs are parsed by herd-server/tests/deploy.rs only"
      has_check=no
      break
    fi
    fail "herd-server --check-config --config $c: $out"
  fi
done
# The Kubernetes config needs the Secret's admin token: its admin listener is beyond loopback.
if [ "$has_check" = yes ] &&
  env -u HERD_ADMIN_TOKEN "$server" --check-config --config "$tmp/k8s-herd.json" >/dev/null 2>&1; then
  fail "the Kubernetes config passes --check-config without an admin token"
fi
echo "deploy check: ok"
