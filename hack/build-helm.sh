#!/usr/bin/env bash
# Builds the helm CLI from its Go module once and caches it outside the clone (no package ships it here).
# Idempotent: later runs return at once. Prints the helm binary's path on its last line.
set -euo pipefail

HELM_VERSION="${KUBETUNE_HELM_VERSION:-v3.21.4}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
OUT="$CACHE/helm-$HELM_VERSION"
BIN="$OUT/bin/helm"

mkdir -p "$OUT/bin"
exec 9>"$OUT.lock"
flock 9
if [ ! -x "$BIN" ]; then
  command -v go >/dev/null || { echo "[helm] go is required on PATH" >&2; exit 1; }
  echo "[helm] building helm $HELM_VERSION from helm.sh/helm/v3 (a few minutes, once)" >&2
  GOBIN="$OUT/bin.tmp" GOFLAGS=-mod=mod CGO_ENABLED=0 \
    go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  mv "$OUT/bin.tmp/helm" "$BIN"
  rmdir "$OUT/bin.tmp"
fi
echo "$BIN"
