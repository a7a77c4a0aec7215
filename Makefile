# kubetune: `make run` fine-tunes a small real pretrained model locally; `make test` runs the whole suite.
# Both set everything up themselves (venv, control plane, Debian packages), cached in ~/.cache/kubetune.

SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

EXAMPLE ?= examples/language-id.yaml
RUN_THREADS ?= $(shell nproc --all)
PYTEST_ARGS ?=

export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONPATH := $(CURDIR)/api:$(CURDIR)/operator:$(CURDIR)/trainer
export PYTHONDONTWRITEBYTECODE := 1

PY = .venv/bin/python

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: venv
venv: ## Create or reuse the cached virtualenv (.venv links to it)
	bash hack/venv.sh >/dev/null

.PHONY: control-plane
control-plane: ## Build or reuse kube-apiserver, controller-manager, scheduler, kubectl; install etcd
	bash hack/build-control-plane.sh

.PHONY: models
models: venv ## Build or reuse the real pretrained models of the model cache (~/.cache/kubetune/models)
	bash hack/model-cache.sh >/dev/null

.PHONY: run
run: models ## Fine-tune SmolLM2-135M-Instruct locally from $(EXAMPLE) (no cluster needed); base vs tuned
	OMP_NUM_THREADS=$(RUN_THREADS) MKL_NUM_THREADS=$(RUN_THREADS) $(PY) -m kubetune.trainer run $(EXAMPLE)

.PHONY: up
up: venv models ## A local kubetune to try: control plane, node agent, the chart's operator, Prometheus (loopback)
	export KUBETUNE_BIN_DIR="$$(bash hack/build-control-plane.sh | tail -n 1)"
	export KUBETUNE_HELM="$$(bash hack/build-helm.sh | tail -n 1)"
	set -a; eval "$$(bash hack/install-tools.sh)"; set +a
	$(PY) hack/cluster.py up

.PHONY: down
down: ## Stop what `make up` started (its state stays in ~/.cache/kubetune/cluster)
	$(PY) hack/cluster.py down

.PHONY: screenshots
screenshots: venv ## Render docs/dashboards/*.png: the Grafana dashboards' panels from the Prometheus of `make up`
	bash hack/screenshots.sh

.PHONY: images
images: ## Build the operator and trainer images with buildah (a Debian-made base, the locks' wheels; no Docker)
	bash hack/images.sh

.PHONY: dashboards
dashboards: ## Rewrite the Grafana dashboards (charts/kubetune/files/dashboards) from hack/dashboards.py
	python3 hack/dashboards.py

.PHONY: values-schema
values-schema: venv ## Fill charts/kubetune/values.schema.json's descriptions and defaults from values.yaml's comments
	$(PY) hack/values_schema.py

.PHONY: crds
crds: venv ## Regenerate crds/ from the pydantic API (and the chart's copy of crds/)
	$(PY) -m kubetune.api.crd FineTuneJob > crds/kubetune.dev_finetunejobs.yaml
	$(PY) -m kubetune.api.crd FineTuneSweep > crds/kubetune.dev_finetunesweeps.yaml
	rm -f charts/kubetune/files/crds/*.yaml && cp crds/*.yaml charts/kubetune/files/crds/

.PHONY: lint
lint: venv ## ruff, mypy (strict on api and operator), import-linter
	.venv/bin/ruff check api operator trainer tests benchmarks
	.venv/bin/ruff format --check api operator trainer tests benchmarks
	.venv/bin/mypy -p kubetune.api -p kubetune.operator -p kubetune.trainer
	.venv/bin/lint-imports

.PHONY: test
test: ## Everything: set-up, lint, the whole pytest suite on the real control plane
	# The control-plane build (CPU-bound, ~20 min once) runs beside the venv install (download-bound).
	# Each phase says its cost ([phase] lines); docs/dev.md records them for a fresh and a warm machine.
	start=$$(date +%s)
	bash hack/phase.sh control-plane bash hack/build-control-plane.sh > .control-plane-build.log 2>&1 & build=$$!
	bash hack/phase.sh helm bash hack/build-helm.sh > .helm-build.log 2>&1 & helm=$$!
	bash hack/phase.sh venv bash hack/venv.sh >/dev/null
	bash hack/phase.sh moto bash hack/moto.sh >/dev/null  # the loopback S3 server of the tests, its own small venv
	bash hack/phase.sh models bash hack/model-cache.sh >/dev/null
	bash hack/phase.sh images bash hack/images.sh >/dev/null  # both images, once per tree (tests/images, podman e2e)
	wait $$build || { cat .control-plane-build.log; exit 1; }
	wait $$helm || { cat .helm-build.log; exit 1; }
	grep -h '^\[phase\]' .control-plane-build.log .helm-build.log >&2
	export KUBETUNE_BIN_DIR="$$(grep -v '^\[phase\]' .control-plane-build.log | tail -n 1)"
	export KUBETUNE_HELM="$$(grep -v '^\[phase\]' .helm-build.log | tail -n 1)"
	set -a; eval "$$(bash hack/phase.sh tools bash hack/install-tools.sh)"; set +a  # prometheus, promtool, hadolint
	bash hack/phase.sh lint $(MAKE) --no-print-directory lint
	$(PY) -c "import enum, operator; assert operator.add(1, 2) == 3"
	echo "[phase] set-up and lint: $$(( $$(date +%s) - start )) s" >&2
	# --durations: the 25 slowest; tests/conftest.py fails the run when a test used over half its time limit.
	bash hack/phase.sh pytest $(PY) -m pytest --durations=25 $(PYTEST_ARGS)
	echo "[phase] make test: $$(( $$(date +%s) - start )) s" >&2
