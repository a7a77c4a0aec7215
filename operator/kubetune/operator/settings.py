"""Operator settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError as error:
        raise ValueError(f"${name} must be an integer, got {value!r}") from error


@dataclass(frozen=True)
class Settings:
    """Everything the operator can be configured with."""

    trainer_image: str = "ghcr.io/kubetune/trainer:latest"
    """Image of the training pods when spec.resources.image is unset."""
    vllm_image: str = "vllm/vllm-openai:v0.11.0"
    """Image of spec.deploy servers with engine VLLM."""
    image_pull_policy: str = "IfNotPresent"
    model_cache_claim: str = "kubetune-models"
    """PersistentVolumeClaim mounted read-only at /mnt/models in every training pod (spec.model.cached)."""
    trainer_metrics_port: int = 9400
    """Port of the trainer's /progress and /metrics endpoints on rank 0."""
    master_port: int = 29500
    """torchrun rendezvous port on worker 0."""
    status_interval_seconds: int = 5
    """How often a running job's status is recomputed; it is patched only when it changed."""
    progress_timeout_seconds: float = 2.0
    metrics_port: int = 8000
    """The operator's own Prometheus endpoint (0 turns it off)."""
    peering: str = "kubetune"
    """kopf peering name: of several replicas with the same name only one is active."""
    peering_priority: int = 0
    """Fixed kopf peering priority (0: a random one per process, so that replicas never tie)."""
    max_workers: int = 16
    """Threads running the (synchronous, API-bound) handlers at once."""
    max_connections: int = 12
    """Connections kopf keeps to the API server, its 5 cluster-wide watches included (so at least 6). Each one
    costs memory: at 500 new jobs 32 connections peaked 35 MiB higher than 8, at the same rate of jobs."""

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()
        return cls(
            trainer_image=os.environ.get("KUBETUNE_TRAINER_IMAGE", d.trainer_image),
            vllm_image=os.environ.get("KUBETUNE_VLLM_IMAGE", d.vllm_image),
            image_pull_policy=os.environ.get("KUBETUNE_IMAGE_PULL_POLICY", d.image_pull_policy),
            model_cache_claim=os.environ.get("KUBETUNE_MODEL_CACHE_CLAIM", d.model_cache_claim),
            trainer_metrics_port=_int("KUBETUNE_TRAINER_METRICS_PORT", d.trainer_metrics_port),
            master_port=_int("KUBETUNE_MASTER_PORT", d.master_port),
            status_interval_seconds=_int("KUBETUNE_STATUS_INTERVAL_SECONDS", d.status_interval_seconds),
            metrics_port=_int("KUBETUNE_METRICS_PORT", d.metrics_port),
            peering=os.environ.get("KUBETUNE_PEERING", d.peering),
            peering_priority=_int("KUBETUNE_PEERING_PRIORITY", d.peering_priority),
            max_workers=_int("KUBETUNE_MAX_WORKERS", d.max_workers),
            max_connections=_int("KUBETUNE_MAX_CONNECTIONS", d.max_connections),
        )


@cache
def current() -> Settings:
    """This process's settings, read from the environment once; every module of the operator uses these."""
    return Settings.from_env()
