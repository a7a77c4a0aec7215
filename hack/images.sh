#!/usr/bin/env bash
# Builds the operator and trainer images from the Dockerfile with buildah, without a Docker engine or a registry:
#   1. a base image made from Debian packages with mmdebstrap (python3 of bookworm, minbase, no docs or perl),
#      because the Dockerfile's PYTHON_IMAGE (the official python image) cannot be pulled here;
#   2. the wheels of requirements/{operator,trainer}.lock downloaded once into the cache, and mounted into the
#      build, which installs them with --no-index (PIP_NO_INDEX / PIP_FIND_LINKS build arguments);
#   3. `buildah bud --layers` of both targets, tagged localhost/kubetune/<target>:<key> and :dev, where <key> hashes
#      everything that goes into the image (Dockerfile, locks, base, sources), so a fresh clone of the same tree
#      reuses the images and a source change rebuilds only the layers after the venv.
# Idempotent; prints `KUBETUNE_<TARGET>_IMAGE=<tag>` lines last. With docker and the official image instead:
#   docker build --target operator -t kubetune/operator .
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
SUITE="${KUBETUNE_DEBIAN_SUITE:-bookworm}"
set -a; eval "$(bash hack/containers.sh)"; set +a

log() { echo "[images] $*" >&2; }
key() { sha256sum | cut -c1-12; }

mkdir -p "$CACHE/containers"
exec 9>"$CACHE/containers/images.lock"
flock 9

# 1. The base: Debian's python3 (3.11 in bookworm, the version of the locks) with venv support.
base_packages="python3-venv,python-is-python3"
base_key="$(echo "$SUITE $base_packages v1" | key)"
base="localhost/kubetune/base:$base_key"
if ! podman image exists "$base"; then
  log "making the base image $base from Debian $SUITE (mmdebstrap, ~1 min)"
  tar="$CACHE/containers/base-$base_key.tar"
  # usrmerge (installed by minbase) pulls in perl; nothing in the images needs either after the build of the base.
  mmdebstrap --quiet --format=tar --variant=minbase --include="$base_packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='chroot "$1" dpkg --purge --force-depends usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl perl-modules-5.36 libperl5.36' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old' \
    "$SUITE" "$tar.tmp" > "$tar.log" 2>&1 || { cat "$tar.log" >&2; exit 1; }
  podman import --quiet --change 'CMD ["python3"]' "$tar.tmp" "$base" >/dev/null
  rm -f "$tar.tmp" "$tar.log"
fi

# 2. The wheels of both locks (several GB for the trainer: torch with its CUDA wheels), once per lock content.
wheels_key="$(cat requirements/operator.lock requirements/trainer.lock | key)"
wheels="$CACHE/wheels-$wheels_key"
if [ ! -f "$wheels/.complete" ]; then
  log "downloading the images' wheels into $wheels (once per lock)"
  python3 -m pip download -q --no-deps -r requirements/operator.lock -r requirements/trainer.lock -d "$wheels" >&2
  touch "$wheels/.complete"
fi

# 3. The two targets.
sources() {
  { find api operator trainer -name '*.py' -not -path '*/__pycache__/*'; echo examples/data/instructions.jsonl; } \
    | LC_ALL=C sort | xargs sha256sum
}
for target in operator trainer; do
  image_key="$({ echo "$base"; cat Dockerfile "requirements/$target.lock"; sources; } | key)"
  image="localhost/kubetune/$target:$image_key"
  if ! podman image exists "$image"; then
    log "building $image (buildah bud --target $target)"
    buildah bud --quiet --layers --network none --target "$target" \
      --ulimit "nofile=$KUBETUNE_NOFILE:$KUBETUNE_NOFILE" --ulimit "nproc=$KUBETUNE_NPROC:$KUBETUNE_NPROC" \
      --build-arg "PYTHON_IMAGE=$base" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
      --volume "$wheels:/wheels:ro" --tag "$image" --tag "localhost/kubetune/$target:dev" . >&2
    # Older trees' tags go (their layers stay while the build cache shares them): the trainer is ~6 GB a tree.
    podman images --format '{{.Repository}}:{{.Tag}}' "localhost/kubetune/$target" \
      | grep -v -e ":$image_key\$" -e ':dev$' | xargs -r podman rmi >/dev/null 2>&1 || true
  fi
  echo "KUBETUNE_$(echo "$target" | tr a-z A-Z)_IMAGE=$image"
done
