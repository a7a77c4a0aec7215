#!/usr/bin/env bash
# Writes requirements/operator.lock and requirements/trainer.lock: the pinned closures each image installs, at the
# versions of requirements/requirements.lock (pip resolves them against PyPI with the big lock as constraints).
# setuptools and pip come with the image's venv and are left out.
set -euo pipefail
cd "$(dirname "$0")/.."
pip=".venv/bin/pip"
write() {
  local kind=$1 head=$2; shift 2
  "$pip" install -q --dry-run --ignore-installed --report "/tmp/kubetune-$kind.json" -c requirements/requirements.lock "$@"
  python3 - "$kind" "$head" <<'PY'
import json, sys
kind, head = sys.argv[1], sys.argv[2]
report = json.load(open(f"/tmp/kubetune-{kind}.json"))
pins = sorted((i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in report["install"])
lines = [f"# {head}", "# at the versions of requirements.lock (tests/unit/test_dockerfile.py checks they agree).",
         "# Regenerate with `bash hack/image-locks.sh`."]
lines += [f"{n}=={v}" for n, v in pins if n not in ("pip", "setuptools")]
open(f"requirements/{kind}.lock", "w").write("\n".join(lines) + "\n")
PY
}
write operator "The operator image's packages: the closure of pydantic, pyyaml, kopf, kubernetes, prometheus-client" \
  pydantic pyyaml kopf kubernetes prometheus-client
write trainer "The trainer image's packages: the closure of requirements/runtime.in less kopf and kubernetes" \
  pydantic pyyaml prometheus-client torch transformers tokenizers safetensors peft accelerate bitsandbytes matplotlib \
  scikit-learn pyarrow fsspec tqdm
