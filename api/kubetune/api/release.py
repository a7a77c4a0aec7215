"""After training: the promotion gate (thresholds a tuned model must meet) and the deployment of a promotable
model as an OpenAI-compatible inference server."""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel, Rule
from .enums import ServingEngine, TestMetric
from .resources import IMAGE_RULE, Quantity


class Threshold(ApiModel):
    """A bound on one test metric of the tuned model."""

    metric: TestMetric = Field(description="The test metric: loss, perplexity, exactMatch, rougeL, accuracy, f1, ...")
    min: float | None = Field(default=None, description="The metric must be at least this.")
    max: float | None = Field(default=None, description="The metric must be at most this.")

    rules = (
        Rule(
            cel="has(self.min) || has(self.max)",
            message="set min, max or both",
            check=lambda s: s.min is not None or s.max is not None,
        ),
    )


class Promotion(ApiModel):
    """The evaluation gate: when every check holds, the succeeded job is Promotable (and spec.deploy serves it)."""

    thresholds: list[Threshold] = Field(
        default_factory=list, max_length=16, description="Bounds on the tuned model's test metrics."
    )
    beat_base_model: bool = Field(
        default=False,
        description="The tuned model must beat the base model on the test set, on the metric validation watches "
        "(loss lower; accuracy or F1 higher).",
    )
    max_retention_regression: float | None = Field(
        default=None,
        ge=0,
        le=10,
        description="Largest retention regression of spec.forgettingGuard allowed (0.02: 2 %).",
    )


class Deploy(ApiModel):
    """Serve the tuned model once the job is promotable: a Deployment and a Service named ``<job>-serve`` with an
    OpenAI-compatible API (/v1/completions, /v1/chat/completions, /v1/models) and Prometheus metrics."""

    replicas: int = Field(default=1, ge=1, le=16, description="Server pods.")
    engine: ServingEngine = Field(
        default=ServingEngine.TRANSFORMERS,
        description="Transformers: the trainer image's small server (CPU or GPU). VLLM: a vLLM image (GPUs).",
    )
    merged: bool = Field(
        default=False,
        description="Serve the merged model (needs output.mergeAdapter for LoRA/QLoRA) instead of the adapter "
        "on the base model. Always the merged model after stages and with VLLM.",
    )
    image: str | None = Field(
        default=None, min_length=1, max_length=1024, description="Server image; the operator's default when unset."
    )
    port: int = Field(default=8000, ge=1024, le=65535, description="Container port of the API.")
    cpu: Quantity = Field(default="1", description="CPU request and limit of each server pod.")
    memory: Quantity = Field(default="4Gi", description="Memory request and limit of each server pod.")
    gpus: int = Field(default=0, ge=0, le=16, description="nvidia.com/gpu per server pod.")
    max_new_tokens: int = Field(default=256, ge=1, le=32768, description="Most tokens one request may generate.")

    rules = (
        Rule(
            cel="self.engine != 'VLLM' || self.gpus > 0",
            message="engine VLLM requires gpus > 0",
            check=lambda s: s.engine != ServingEngine.VLLM or s.gpus > 0,
        ),
        IMAGE_RULE,
    )
