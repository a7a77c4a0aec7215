# syntax=docker/dockerfile:1
# Two images from one Dockerfile; each installs exactly the versions pinned in requirements/ into a venv built in
# its own stage, then copies only the venv and the sources into a clean final stage that runs as a non-root user.
#   docker build --target operator -t ghcr.io/kubetune/operator:0.1.0 .  # pydantic, kopf, kubernetes; no torch
#   docker build --target trainer  -t ghcr.io/kubetune/trainer:0.1.0  .  # torch with its CUDA 13 runtime wheels,
#                                                                        # transformers, peft, accelerate, bitsandbytes
# The trainer needs only the NVIDIA driver from the node (the CUDA runtime, cuBLAS and cuDNN come as wheels).
# tests/unit/test_dockerfile.py checks this file with hadolint and by its structure; `make images` (hack/images.sh)
# builds both targets for real with buildah from a Debian-made base and local wheels, and tests/images runs them:
#   buildah bud --target trainer --build-arg PYTHON_IMAGE=<base> --build-arg PIP_NO_INDEX=1 \
#     --build-arg PIP_FIND_LINKS=/wheels --volume <wheel dir>:/wheels:ro .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS operator-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Unset by default (PyPI); PIP_NO_INDEX=1 and PIP_FIND_LINKS=<dir> install from local wheels instead.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
COPY requirements/operator.lock /tmp/operator.lock
# The operator uses the kubernetes client's synchronous API: its asyncio copy (68 MB) and pip go (size < 250 MB).
RUN python -m venv /opt/kubetune \
    && /opt/kubetune/bin/pip install --no-deps --requirement /tmp/operator.lock \
    && rm -rf /opt/kubetune/lib/python3.*/site-packages/kubernetes/aio /opt/kubetune/lib/python3.*/site-packages/pip \
              /opt/kubetune/lib/python3.*/site-packages/setuptools /opt/kubetune/lib/python3.*/site-packages/pkg_resources

FROM ${PYTHON_IMAGE} AS trainer-venv
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Unset by default (PyPI); PIP_NO_INDEX=1 and PIP_FIND_LINKS=<dir> install from local wheels instead.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
COPY requirements/trainer.lock /tmp/trainer.lock
RUN python -m venv /opt/kubetune \
    && /opt/kubetune/bin/pip install --no-deps --requirement /tmp/trainer.lock

FROM ${PYTHON_IMAGE} AS operator
LABEL org.opencontainers.image.title="kubetune operator" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=operator-venv /opt/kubetune /opt/kubetune
COPY api /app/api
COPY operator /app/operator
ENV PATH=/opt/kubetune/bin:$PATH PYTHONPATH=/app/api:/app/operator \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp
WORKDIR /app
USER 65532:65532
EXPOSE 8000 8080
ENTRYPOINT ["kopf", "run", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz", "-m", "kubetune.operator.handlers"]

FROM ${PYTHON_IMAGE} AS trainer
LABEL org.opencontainers.image.title="kubetune trainer" \
      org.opencontainers.image.source="https://github.com/kubetune/kubetune" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=trainer-venv /opt/kubetune /opt/kubetune
COPY api /app/api
COPY trainer /app/trainer
# The corpus the tiny test Llama's tokenizer is trained on (kubetune/tiny-llama, built on first use: tiny.py).
COPY examples/data/instructions.jsonl /app/examples/data/instructions.jsonl
# Not offline by default: the operator sets HF_HUB_OFFLINE=1 unless spec.model.huggingFace needs the Hub.
# DL3064 takes TOKENIZERS_PARALLELISM for a secret (it contains "TOKEN"); nothing here is one.
# hadolint ignore=DL3064
ENV PATH=/opt/kubetune/bin:$PATH PYTHONPATH=/app/api:/app/trainer \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp HF_HOME=/tmp/huggingface \
    OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
WORKDIR /app
USER 65532:65532
EXPOSE 9400 29500
ENTRYPOINT ["python", "-m", "kubetune.trainer"]
