#!/usr/bin/env bash
# Validates the deployment files offline: every Kubernetes manifest under deploy/ against
# the Kubernetes $KUBERNETES_VERSION schemas, strictly (an unknown or misplaced field
# fails), and docker-compose.yml against the Compose specification's schema. Both
# validators ship their schemas in their packages: nothing is fetched at run time.
# The tools live in a Python venv under target/ (created once, reused). Prints one
# closing line; exits non-zero when a file does not validate.
#
#   REDSINK_DEPLOY_VENV   venv location (default: <repo>/target/deploy-venv)
#   REDSINK_PYTHON        interpreter used to create the venv (default: python3)
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
# The oldest Kubernetes release the manifests promise to work with.
KUBERNETES_VERSION=1.33.0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${REDSINK_DEPLOY_VENV:-$repo/target/deploy-venv}
base_python=${REDSINK_PYTHON:-python3}
py=$venv/bin/python

log() { echo "validate-deploy: $*" >&2; }

ready() {
  [ -x "$py" ] && "$py" - "$KUBERNETES_VALIDATE_VERSION" "$CHECK_JSONSCHEMA_VERSION" \
    >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if (version("kubernetes-validate"), version("check-jsonschema")) == tuple(sys.argv[1:]) else 1)
PY
}

if ! ready; then
  if [ ! -x "$py" ]; then
    log "creating venv at $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! "$base_python" -m venv "$venv" >&2; then
      # Debian's python3 lacks ensurepip until python3-venv is installed.
      log "installing python3-venv"
      {
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
      } >&2
      rm -rf "$venv"
      "$base_python" -m venv "$venv" >&2
    fi
  fi
  log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION check-jsonschema==$CHECK_JSONSCHEMA_VERSION (once)"
  "$py" -m pip install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" >&2
  ready || { log "venv at $venv lacks the pinned validators"; exit 1; }
fi

cd "$repo"
failed=0
checked=0
mapfile -t manifests < <(find deploy -name '*.yaml' -path '*kubernetes*' | sort)
[ "${#manifests[@]}" -gt 0 ] || { log "no manifests under deploy/"; exit 1; }
for manifest in "${manifests[@]}"; do
  checked=$((checked + 1))
  "$venv/bin/kubernetes-validate" --strict --quiet --kubernetes-version "$KUBERNETES_VERSION" \
    "$manifest" || failed=$((failed + 1))
done
# check-jsonschema's vendored copy of the Compose specification (no download).
checked=$((checked + 1))
if ! out=$("$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml 2>&1); then
  echo "$out" >&2
  failed=$((failed + 1))
fi
echo "validate-deploy: $((checked - failed)) valid, $failed invalid (kubernetes $KUBERNETES_VERSION, strict; compose spec)"
[ "$failed" = 0 ]
