# Two images from one Dockerfile:
#   docker build --target operator -t kubetune/operator .   (pydantic + kopf; no torch)
#   docker build --target trainer  -t kubetune/trainer  .   (torch, transformers, peft, accelerate, bitsandbytes)
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY operator ./operator
COPY trainer ./trainer
COPY crds ./crds

FROM base AS operator
RUN pip install .
RUN useradd --uid 65532 --no-create-home kubetune
USER 65532
ENTRYPOINT ["kopf", "run", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz", "-m", "kubetune.operator.handlers"]

FROM base AS trainer
COPY requirements ./requirements
RUN pip install -r requirements/requirements.lock && pip install --no-deps ".[trainer]"
RUN useradd --uid 65532 --create-home kubetune
USER 65532
ENV OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
ENTRYPOINT ["python", "-m", "kubetune.trainer"]
