#!/usr/bin/env bash
# Makes the herd's two Secrets as a manifest (default deploy/k8s/secrets.yaml, not committed):
#   herd-tls   the CA and every server's certificate and key, by `herd-cli certs` for the
#              servers of configmap.yaml's herd config (an existing CA in the TLS directory
#              is reused, so adding a server keeps the others' certificates valid)
#   herd-keys  admin-token (HERD_ADMIN_TOKEN, or a fresh random one) and, when
#              PLACES_API_KEY is set, places-api-key
# Usage: deploy/k8s/make-secrets.sh [TLS_DIR] [OUT]    then: kubectl apply -f OUT
# herd-cli: $HERD_CLI, else the one on PATH, else `cargo run -p herd-cli`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tls_dir="${1:-$here/tls}"
out="${2:-$here/secrets.yaml}"
cli=()
if [ -n "${HERD_CLI:-}" ]; then cli=("$HERD_CLI")
elif command -v herd-cli >/dev/null; then cli=(herd-cli)
else cli=(cargo run -q --manifest-path "$here/../../Cargo.toml" -p herd-cli --)
fi
config=$(mktemp)
trap 'rm -f "$config"' EXIT
python3 "$here/configmap_json.py" "$here/configmap.yaml" > "$config"
"${cli[@]}" certs --config "$config" --out "$tls_dir" >&2
umask 077
python3 - "$tls_dir" "$config" > "$out" <<'PY'
import base64, json, os, secrets, sys
tls_dir, config = sys.argv[1], sys.argv[2]
names = json.load(open(config))["servers"]
files = ["ca.pem"] + [f"{n}.{ext}" for n in names for ext in ("pem", "key")]
def b64(path):
    return base64.b64encode(open(os.path.join(tls_dir, path), "rb").read()).decode()
print("# Made by deploy/k8s/make-secrets.sh: keys inside, do not commit.")
print("apiVersion: v1\nkind: Secret\nmetadata:\n  name: herd-tls\n  labels: {app.kubernetes.io/name: herd}")
print("type: Opaque\ndata:")
for f in files:
    print(f"  {f}: {b64(f)}")
token = os.environ.get("HERD_ADMIN_TOKEN") or secrets.token_urlsafe(32)
print("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: herd-keys\n  labels: {app.kubernetes.io/name: herd}")
print("type: Opaque\ndata:")
print(f"  admin-token: {base64.b64encode(token.encode()).decode()}")
key = os.environ.get("PLACES_API_KEY")
if key:
    print(f"  places-api-key: {base64.b64encode(key.encode()).decode()}")
PY
echo "make-secrets.sh: wrote $out (herd-tls: ${tls_dir}; herd-keys)" >&2
