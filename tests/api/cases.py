"""Manifests that both pydantic and the API server must reject (and a few they must both accept).

Each bad case names the text that both error messages must contain: the field (or the rule about it).
"""

from __future__ import annotations

from typing import Any

from tests.support.builders import JobBuilder

QLORA_KNOBS = {"quantType": "NF4", "doubleQuant": True}

# (id, manifest, text both errors must contain)
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("learning-rate-wrong-type", JobBuilder().set("spec.training.learningRate", "high").build(),
     "spec.training.learningRate"),
    ("epochs-string", JobBuilder().set("spec.training.epochs", "3").build(), "spec.training.epochs"),
    ("unknown-training-field", JobBuilder().set("spec.training.learningRat", 0.1).build(),
     "spec.training.learningRat"),
    ("unknown-spec-field", JobBuilder().set("spec.gpus", 2).build(), "spec.gpus"),
    ("lora-rank-zero", JobBuilder().set("spec.method.lora", {"rank": 0}).build(), "spec.method.lora.rank"),
    ("learning-rate-zero", JobBuilder().set("spec.training.learningRate", 0).build(), "spec.training.learningRate"),
    ("too-many-workers", JobBuilder().set("spec.resources.workers", 65).build(), "spec.resources.workers"),
    ("unknown-method", JobBuilder().set("spec.method.type", "Adapter").build(), "spec.method.type"),
    ("qlora-knobs-on-lora", JobBuilder().set("spec.method", {"type": "LoRA", "quantization": QLORA_KNOBS}).build(),
     "quantization is only allowed when type is QLoRA"),
    ("lora-knobs-on-full", JobBuilder().set("spec.method", {"type": "Full", "lora": {"rank": 8}}).build(),
     "lora is only allowed when type is LoRA or QLoRA"),
    ("model-two-sources", JobBuilder().set("spec.model.uri", "s3://models/x").build(),
     "exactly one of pvc, uri or cached"),
    ("dataset-no-source", JobBuilder().set("spec.data.datasets", [{"name": "train"}]).build(),
     "exactly one of pvc, uri or configMap"),
    ("split-ratios-too-large", JobBuilder().set("spec.data.split", {"validationRatio": 0.5, "testRatio": 0.5}).build(),
     "validationRatio + testRatio"),
    ("classification-task-with-instruction-data", JobBuilder().set("spec.task", {"type": "Classification"}).build(),
     "task.type Classification and data.format Classification"),
    ("name-too-long", JobBuilder(name="x" * 60).build(), "metadata.name must be at most 52"),
    ("cpu-not-a-quantity", JobBuilder().set("spec.resources.cpu", "two").build(), "spec.resources.cpu"),
    ("duplicate-dataset-names", JobBuilder().set("spec.data.datasets[1]", {"name": "train", "uri": "s3://b/x"}).build(),
     "datasets[].name must be unique"),
    ("f1-on-causal-lm", JobBuilder().set("spec.validation.metric", "F1").build(), "validation.metric"),
    ("warmup-ratio-and-steps", JobBuilder().set("spec.training.warmupRatio", 0.1).set("spec.training.warmupSteps", 10)
     .build(), "warmupRatio and warmupSteps"),
    ("uri-without-scheme", JobBuilder().drop("spec.model.cached").set("spec.model.uri", "bucket/model").build(),
     "spec.model.uri"),
    ("pvc-absolute-path", JobBuilder().set("spec.data.datasets[0].pvc.path", "/etc/passwd").build(),
     "path must be relative"),
    ("toleration-exists-with-value", JobBuilder().set("spec.resources.tolerations", [
        {"key": "gpu", "operator": "Exists", "value": "yes"}]).build(), "value must be unset when operator is Exists"),
    ("missing-data", JobBuilder().drop("spec.data").build(), "spec.data"),
    ("ratio-with-explicit-validation-file", JobBuilder()
     .set("spec.data.datasets[1]", {"name": "val", "uri": "s3://b/v.jsonl", "usage": "Validation"})
     .set("spec.data.split", {"validationRatio": 0.2}).build(),
     "split.validationRatio must be unset when a dataset has usage Validation"),
    ("negative-weight", JobBuilder().set("spec.data.datasets[0].weight", -1).build(), "spec.data.datasets[0].weight"),
    ("labels-without-classification", JobBuilder().set("spec.task", {"labels": ["a", "b"]}).build(),
     "labels is only allowed when type is Classification"),
    ("fsdp-with-lora", JobBuilder().set("spec.training.distributed", "FSDP").set("spec.resources.gpusPerWorker", 1)
     .build(), "FSDP requires method.type Full"),
    ("fsdp-on-cpu", JobBuilder().set("spec.training.distributed", "FSDP").set("spec.method.type", "Full").build(),
     "FSDP requires method.type Full and resources.gpusPerWorker > 0"),
]  # fmt: skip

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("minimal", JobBuilder().build()),
    ("qlora-with-knobs", JobBuilder().set("spec.method", {"type": "QLoRA", "quantization": QLORA_KNOBS}).build()),
    ("integer-cpu-and-learning-rate", JobBuilder().set("spec.resources.cpu", 4).set("spec.training.learningRate", 1)
     .build()),
    ("classification", JobBuilder().set("spec.task", {"type": "Classification", "labels": ["neg", "pos"]})
     .set("spec.data.format", "Classification").set("spec.validation", {"metric": "F1"}).build()),
    ("explicit-test-file", JobBuilder()
     .set("spec.data.datasets[1]", {"name": "test", "configMap": {"name": "cm", "key": "test.csv"}, "usage": "Test"})
     .build()),
    ("name-at-limit", JobBuilder(name="x" * 52).build()),
    ("fsdp-full-on-gpus", JobBuilder().set("spec.training.distributed", "FSDP").set("spec.method.type", "Full")
     .set("spec.resources.gpusPerWorker", 8).build()),
]  # fmt: skip
