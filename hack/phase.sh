#!/usr/bin/env bash
# Runs one phase of `make test` and says how long it took on stderr (`[phase] NAME: 123 s`), so a fresh-machine
# run's cost can be read phase by phase from its log (docs/dev.md records the figures).
# Usage: hack/phase.sh NAME COMMAND [ARGS...]; exits with the command's status.
set -uo pipefail
name="$1"; shift
start=$(date +%s)
"$@"
rc=$?
echo "[phase] $name: $(( $(date +%s) - start )) s (rc $rc)" >&2
exit "$rc"
