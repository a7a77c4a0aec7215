#!/usr/bin/env bash
# Installs (once) what builds and runs the images without a Docker engine: podman, buildah, runc and mmdebstrap
# from Debian, and prints the environment that points them at kubetune's own configuration (KEY=VALUE lines, for
# `eval` or `set -a`): image storage under ~/.cache/kubetune/containers (so a fresh clone reuses built images),
# runc as the OCI runtime, and default rlimits no higher than this machine's hard limits.
#
# Why not the defaults, measured on this VM (Firecracker, cgroup v1 with a cgroup2 `unified` mount holding hugetlb,
# root without CAP_SYS_RESOURCE):
#   crun: setrlimit `RLIMIT_NOFILE`: Operation not permitted   podman asks for 1048576 open files; the hard limit
#                                                              here is lower and cannot be raised -> default_ulimits
#   crun: setrlimit `RLIMIT_NPROC`: Operation not permitted    the same for processes           -> default_ulimits
#   crun: cgroups in hybrid mode not supported, drop all controllers from cgroupv2
#                                                              crun 1.8 refuses hybrid cgroups  -> runc, which runs
#                                                              on the v1 controllers (memory and CPU limits hold)
set -euo pipefail

CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
DIR="$CACHE/containers"

log() { echo "[containers] $*" >&2; }

missing=()
for tool in podman buildah runc mmdebstrap; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null || true
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq podman buildah runc mmdebstrap uidmap >/dev/null
fi

nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" = unlimited ] && nproc=1048576
# Measured: a process limit above kernel.pid_max (32768 here) is refused too, even below the hard limit.
pid_max="$(cat /proc/sys/kernel/pid_max)"
[ "$nproc" -gt "$pid_max" ] && nproc="$pid_max"
mkdir -p "$DIR/storage"
cat > "$DIR/storage.conf.tmp" <<EOF
# Written by hack/containers.sh: kubetune's image storage, outside any clone.
[storage]
driver = "overlay"
runroot = "/run/kubetune-containers"
graphroot = "$DIR/storage"
EOF
cat > "$DIR/containers.conf.tmp" <<EOF
# Written by hack/containers.sh (see there why: rlimits and cgroups on this machine).
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
netns = "host"
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
mv "$DIR/storage.conf.tmp" "$DIR/storage.conf"
mv "$DIR/containers.conf.tmp" "$DIR/containers.conf"

echo "CONTAINERS_STORAGE_CONF=$DIR/storage.conf"
echo "CONTAINERS_CONF=$DIR/containers.conf"
echo "BUILDAH_RUNTIME=$(command -v runc)"
echo "BUILDAH_ISOLATION=oci"
echo "KUBETUNE_NOFILE=$nofile"  # for buildah, which ignores default_ulimits
echo "KUBETUNE_NPROC=$nproc"
