#!/usr/bin/env bash
# Creates (once) the small virtualenv of the tests' loopback S3 server (moto's server mode), cached outside the
# clone and keyed by requirements/moto.lock and the interpreter. Prints its python on the last line.
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
PYTHON="${PYTHON:-python3}"
lock="requirements/moto.lock"
key="$({ cat "$lock"; "$PYTHON" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-12)"
venv="$CACHE/moto-$key"

mkdir -p "$CACHE"
exec 9>"$venv.lock"
flock 9
if [ ! -f "$venv/.complete" ]; then
  echo "[moto] creating $venv (a loopback S3 server for the tests, ~140 MB)" >&2
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install -q --no-deps -r "$lock" >&2
  "$venv/bin/python" -c "import moto.server, boto3, flask, flask_cors" >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python"
