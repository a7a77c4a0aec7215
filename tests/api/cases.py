"""Manifests that both pydantic and the API server must reject (and a few they must both accept).

Each bad case names the text that both error messages must contain: the field (or the rule about it).
"""

from __future__ import annotations

from typing import Any

from tests.support.builders import JobBuilder

QLORA_KNOBS = {"quantType": "NF4", "doubleQuant": True}
GENERAL = {"name": "general", "uri": "s3://b/general.jsonl", "usage": "General"}

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
     "exactly one of pvc, uri, cached or fromJob"),
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
    ("stage-names-unknown-dataset", JobBuilder().set("spec.stages", [{"name": "a", "datasets": ["nope"]}]).build(),
     "stages[].datasets must name datasets of data.datasets"),
    ("duplicate-stage-names", JobBuilder().set("spec.stages", [{"name": "a", "datasets": ["train"]},
                                                               {"name": "a", "datasets": ["train"]}]).build(),
     "stages[].name must be unique"),
    ("classification-stage-with-instruction-rows", JobBuilder().set("spec.stages", [
        {"name": "a", "datasets": ["train"], "task": {"type": "Classification"}}]).build(),
     "stages[]: task.type Classification and format Classification go together"),
    ("general-data-without-guard", JobBuilder().set("spec.data.datasets[1]", GENERAL).build(),
     "forgettingGuard and a data.datasets entry with usage General go together"),
    ("guard-without-general-data", JobBuilder().set("spec.forgettingGuard", {}).build(),
     "forgettingGuard and a data.datasets entry with usage General go together"),
    ("few-shot-on-classification", JobBuilder().set("spec.task", {"type": "Classification"})
     .set("spec.data.format", "Classification").set("spec.evaluation.fewShot", {"k": 2}).build(),
     "evaluation.fewShot requires task.type CausalLM"),
    ("context-shorter-than-training", JobBuilder().set("spec.training.maxSeqLength", 4096)
     .set("spec.contextExtension", {"ropeScaling": "YaRN", "targetLength": 2048}).build(),
     "training.maxSeqLength must not exceed contextExtension.targetLength"),
    ("unknown-rope-scaling", JobBuilder().set("spec.contextExtension", {"ropeScaling": "NTK", "targetLength": 2048})
     .build(), "spec.contextExtension.ropeScaling"),
    ("augmentation-without-noise", JobBuilder().set("spec.data.augmentation", {"wordDropout": 0.0, "wordSwap": 0.0})
     .build(), "at least one of wordDropout, wordSwap and tokenNoise"),
    ("label-smoothing-one", JobBuilder().set("spec.training.labelSmoothing", 1.0).build(),
     "spec.training.labelSmoothing"),
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
    ("everything-of-issue-7", JobBuilder()
     .set("spec.data.datasets[0].task", "qa").set("spec.data.datasets[0].weight", 2.0)
     .set("spec.data.datasets[1]", {"name": "docs", "uri": "s3://b/docs.jsonl", "task": "docs"})
     .set("spec.data.datasets[2]", GENERAL)
     .set("spec.data.mixing", {"strategy": "Temperature", "temperature": 3.0})
     .set("spec.data.augmentation", {"copies": 2, "wordDropout": 0.1, "tokenNoise": 0.05})
     .set("spec.training.labelSmoothing", 0.1).set("spec.training.neftuneNoiseAlpha", 5.0)
     .set("spec.training.dropout", 0.1).set("spec.evaluation.fewShot", {"k": 3})
     .set("spec.forgettingGuard", {"replayRatio": 0.2, "maxRegression": 0.02, "onRegression": "Fail"})
     .set("spec.contextExtension", {"ropeScaling": "YaRN", "targetLength": 4096, "passkeySamples": 3})
     .set("spec.stages", [{"name": "domain", "datasets": ["docs"], "format": "Completion"},
                          {"name": "instruct", "datasets": ["train"], "training": {"epochs": 1}}])
     .build()),
]  # fmt: skip
