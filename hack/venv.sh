#!/usr/bin/env bash
# Creates (once) the Python virtualenv every make target uses, cached outside the clone and keyed by the
# lock file and the interpreter, so a fresh clone on the same machine reuses it. The project itself is
# not installed into it (several clones share it): the Makefile puts api/, operator/ and trainer/ on
# PYTHONPATH. Prints the venv directory on its last line.
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
PYTHON="${PYTHON:-python3}"
lock="requirements/requirements.lock"
key="$({ cat "$lock"; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
venv="$CACHE/venv-$key"

mkdir -p "$CACHE"
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "[venv] creating $venv (torch and friends: several GB, once per lock file)" >&2
  rm -rf "$venv"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$lock" >&2
  touch "$venv/.complete"
fi
ln -sfn "$venv" .venv
echo "$venv"
