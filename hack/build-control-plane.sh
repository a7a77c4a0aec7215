#!/usr/bin/env bash
# Builds the test control plane once and caches it outside the clone:
#   kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from the Go modules of
#   k8s.io/kubernetes (each k8s.io/* staging module replaced by its published v0.<minor>.<patch>),
#   plus etcd from Debian's etcd-server package.
# Idempotent: a finished build leaves a stamp and later runs return at once.
# Prints the bin directory on its last line.
set -euo pipefail

K8S_VERSION="${KUBETUNE_K8S_VERSION:-v1.34.4}"
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
OUT="$CACHE/k8s-$K8S_VERSION"
BIN="$OUT/bin"
STAMP="$OUT/.built"

log() { echo "[control-plane] $*" >&2; }

ensure_etcd() {
  if ! command -v openssl >/dev/null 2>&1; then  # the test fixture makes service-account keys with it
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  fi
  if ! command -v etcd >/dev/null 2>&1 && [ ! -x /usr/bin/etcd ]; then
    log "installing etcd-server from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || true
    apt-get install -y -qq etcd-server >/dev/null
  fi
  # Debian starts an etcd service on install where an init system runs; tests start their own.
  ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$BIN/etcd"
}

mkdir -p "$BIN"
# One build at a time per cache (a CI clone and a developer may start together).
exec 9>"$OUT.lock"
flock 9
if [ -f "$STAMP" ] && [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kubectl" ]; then
  ensure_etcd
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { log "go is required on PATH"; exit 1; }
src="$OUT/src"
mkdir -p "$src"
cd "$src"
minor="${K8S_VERSION#v1.}"            # 34.4
staging_version="v0.${minor}"         # v0.34.4

log "building Kubernetes $K8S_VERSION (staging modules at $staging_version); this takes ~20 minutes once"
cat > go.mod <<GOMOD
module kubetune.dev/controlplane

go 1.24.0

require k8s.io/kubernetes $K8S_VERSION
GOMOD
cat > tools.go <<'GOSRC'
//go:build tools

package controlplane

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GOSRC

# Every staging module that k8s.io/kubernetes replaces with ./staging/src/... is replaced here by its
# published version of the same minor.
modfile="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
for module in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$modfile"); do
  go mod edit -replace "$module=$module@$staging_version"
done
go mod tidy -e >/dev/null 2>&1 || true
GOFLAGS=-mod=mod go get "k8s.io/kubernetes@$K8S_VERSION" >/dev/null

# Go >= 1.26 turns on encoding/json/v2, which breaks the apiserver's OpenAPI handler.
export GOEXPERIMENT=nojsonv2
export CGO_ENABLED=0
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor%%.*} \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=${minor%%.*}"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  log "go build $cmd"
  GOFLAGS=-mod=mod go build -trimpath -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
done
ensure_etcd
touch "$STAMP"
log "done: $BIN"
echo "$BIN"
