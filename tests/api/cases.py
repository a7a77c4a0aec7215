"""Manifests that both pydantic and the API server must reject (and a few they must both accept).

Each bad case names the text that both error messages must contain: the field (or the rule about it).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubetune.api import describe, parse_job
from kubetune.api.sweep import parse_sweep
from tests.support.builders import JobBuilder

QLORA_KNOBS = {"quantType": "NF4", "doubleQuant": True}
GENERAL = {"name": "general", "uri": "s3://b/general.jsonl", "usage": "General"}


def parse(doc: dict[str, Any]) -> Any:
    """A FineTuneJob or FineTuneSweep, as its kind says (pydantic's verdict on a case)."""
    return parse_sweep(doc) if doc.get("kind") == "FineTuneSweep" else parse_job(doc)


def pydantic_verdict(doc: dict[str, Any]) -> tuple[bool, str]:
    """(accepted?, the error message naming each field) of pydantic on a FineTuneJob or FineTuneSweep."""
    try:
        parse(doc)
    except ValidationError as error:
        return False, describe(error)
    return True, ""


def sweep(name: str = "sweep", **spec: Any) -> dict[str, Any]:
    """A FineTuneSweep over the builder's job, with ``spec`` fields on top."""
    body = {
        "template": JobBuilder().build()["spec"],
        "parameters": [{"path": "training.learningRate", "values": [0.01, 0.001]}],
        **spec,
    }
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": name}, "spec": body}


RANGE = {"path": "training.learningRate", "min": 1e-5, "max": 1e-2, "log": True}

# (id, manifest, text both errors must contain)
BAD: list[tuple[str, dict[str, Any], str]] = [
    (
        "learning-rate-wrong-type",
        JobBuilder().set("spec.training.learningRate", "high").build(),
        "spec.training.learningRate",
    ),
    ("epochs-string", JobBuilder().set("spec.training.epochs", "3").build(), "spec.training.epochs"),
    ("unknown-training-field", JobBuilder().set("spec.training.learningRat", 0.1).build(), "spec.training.learningRat"),
    ("unknown-spec-field", JobBuilder().set("spec.gpus", 2).build(), "spec.gpus"),
    ("lora-rank-zero", JobBuilder().set("spec.method.lora", {"rank": 0}).build(), "spec.method.lora.rank"),
    ("learning-rate-zero", JobBuilder().set("spec.training.learningRate", 0).build(), "spec.training.learningRate"),
    ("too-many-workers", JobBuilder().set("spec.resources.workers", 65).build(), "spec.resources.workers"),
    ("unknown-method", JobBuilder().set("spec.method.type", "Adapter").build(), "spec.method.type"),
    (
        "qlora-knobs-on-lora",
        JobBuilder().set("spec.method", {"type": "LoRA", "quantization": QLORA_KNOBS}).build(),
        "quantization is only allowed when type is QLoRA",
    ),
    (
        "lora-knobs-on-full",
        JobBuilder().set("spec.method", {"type": "Full", "lora": {"rank": 8}}).build(),
        "lora is only allowed when type is LoRA or QLoRA",
    ),
    (
        "model-two-sources",
        JobBuilder().set("spec.model.uri", "s3://models/x").build(),
        "exactly one of pvc, uri, cached, huggingFace or fromJob",
    ),
    (
        "dataset-no-source",
        JobBuilder().set("spec.data.datasets", [{"name": "train"}]).build(),
        "exactly one of pvc, uri, configMap or huggingFace",
    ),
    (
        "split-ratios-too-large",
        JobBuilder().set("spec.data.split", {"validationRatio": 0.5, "testRatio": 0.5}).build(),
        "validationRatio + testRatio",
    ),
    (
        "classification-task-with-instruction-data",
        JobBuilder().set("spec.task", {"type": "Classification"}).build(),
        "task.type Classification and data.format Classification",
    ),
    ("name-too-long", JobBuilder(name="x" * 60).build(), "metadata.name must be at most 52"),
    ("cpu-not-a-quantity", JobBuilder().set("spec.resources.cpu", "two").build(), "spec.resources.cpu"),
    ("negative-integer-cpu", JobBuilder().set("spec.resources.cpu", -1).build(), "spec.resources.cpu"),
    ("negative-integer-memory", JobBuilder().set("spec.resources.memory", -2).build(), "spec.resources.memory"),
    (
        "duplicate-dataset-names",
        JobBuilder().set("spec.data.datasets[1]", {"name": "train", "uri": "s3://b/x"}).build(),
        "datasets[].name must be unique",
    ),
    ("f1-on-causal-lm", JobBuilder().set("spec.validation.metric", "F1").build(), "validation.metric"),
    (
        "warmup-ratio-and-steps",
        JobBuilder().set("spec.training.warmupRatio", 0.1).set("spec.training.warmupSteps", 10).build(),
        "warmupRatio and warmupSteps",
    ),
    (
        "uri-without-scheme",
        JobBuilder().drop("spec.model.cached").set("spec.model.uri", "bucket/model").build(),
        "spec.model.uri",
    ),
    (
        "pvc-absolute-path",
        JobBuilder().set("spec.data.datasets[0].pvc.path", "/etc/passwd").build(),
        "path must be relative",
    ),
    (
        "toleration-exists-with-value",
        JobBuilder().set("spec.resources.tolerations", [{"key": "gpu", "operator": "Exists", "value": "yes"}]).build(),
        "value must be unset when operator is Exists",
    ),
    ("missing-data", JobBuilder().drop("spec.data").build(), "spec.data"),
    (
        "ratio-with-explicit-validation-file",
        JobBuilder()
        .set("spec.data.datasets[1]", {"name": "val", "uri": "s3://b/v.jsonl", "usage": "Validation"})
        .set("spec.data.split", {"validationRatio": 0.2})
        .build(),
        "split.validationRatio must be unset when a dataset has usage Validation",
    ),
    ("negative-weight", JobBuilder().set("spec.data.datasets[0].weight", -1).build(), "spec.data.datasets[0].weight"),
    (
        "labels-without-classification",
        JobBuilder().set("spec.task", {"labels": ["a", "b"]}).build(),
        "labels is only allowed when type is Classification",
    ),
    (
        "fsdp-with-lora",
        JobBuilder().set("spec.training.distributed", "FSDP").set("spec.resources.gpusPerWorker", 1).build(),
        "FSDP requires method.type Full",
    ),
    (
        "stage-names-unknown-dataset",
        JobBuilder().set("spec.stages", [{"name": "a", "datasets": ["nope"]}]).build(),
        "stages[].datasets must name datasets of data.datasets",
    ),
    (
        "duplicate-stage-names",
        JobBuilder()
        .set("spec.stages", [{"name": "a", "datasets": ["train"]}, {"name": "a", "datasets": ["train"]}])
        .build(),
        "stages[].name must be unique",
    ),
    (
        "classification-stage-with-instruction-rows",
        JobBuilder()
        .set("spec.stages", [{"name": "a", "datasets": ["train"], "task": {"type": "Classification"}}])
        .build(),
        "stages[]: task.type Classification and format Classification go together",
    ),
    (
        "general-data-without-guard",
        JobBuilder().set("spec.data.datasets[1]", GENERAL).build(),
        "forgettingGuard and a data.datasets entry with usage General go together",
    ),
    (
        "guard-without-general-data",
        JobBuilder().set("spec.forgettingGuard", {}).build(),
        "forgettingGuard and a data.datasets entry with usage General go together",
    ),
    (
        "few-shot-on-classification",
        JobBuilder()
        .set("spec.task", {"type": "Classification"})
        .set("spec.data.format", "Classification")
        .set("spec.evaluation.fewShot", {"k": 2})
        .build(),
        "evaluation.fewShot requires task.type CausalLM",
    ),
    (
        "context-shorter-than-training",
        JobBuilder()
        .set("spec.training.maxSeqLength", 4096)
        .set("spec.contextExtension", {"ropeScaling": "YaRN", "targetLength": 2048})
        .build(),
        "training.maxSeqLength must not exceed contextExtension.targetLength",
    ),
    (
        "unknown-rope-scaling",
        JobBuilder().set("spec.contextExtension", {"ropeScaling": "NTK", "targetLength": 2048}).build(),
        "spec.contextExtension.ropeScaling",
    ),
    (
        "augmentation-without-noise",
        JobBuilder().set("spec.data.augmentation", {"wordDropout": 0.0, "wordSwap": 0.0}).build(),
        "at least one of wordDropout, wordSwap and tokenNoise",
    ),
    (
        "label-smoothing-one",
        JobBuilder().set("spec.training.labelSmoothing", 1.0).build(),
        "spec.training.labelSmoothing",
    ),
    (
        "deploy-without-output",
        JobBuilder().set("spec.deploy", {}).build(),
        "deploy requires output.pvc and task.type CausalLM",
    ),
    (
        "deploy-merged-adapter-not-saved",
        JobBuilder().set("spec.output", {"pvc": {"claimName": "out"}}).set("spec.deploy", {"merged": True}).build(),
        "deploy.merged requires method.type Full or output.mergeAdapter",
    ),
    (
        "vllm-without-gpus",
        JobBuilder().set("spec.output", {"pvc": {"claimName": "out"}}).set("spec.deploy", {"engine": "VLLM"}).build(),
        "engine VLLM requires gpus > 0",
    ),
    (
        "threshold-without-bound",
        JobBuilder().set("spec.promotion", {"thresholds": [{"metric": "f1"}]}).build(),
        "set min, max or both",
    ),
    (
        "unknown-threshold-metric",
        JobBuilder().set("spec.promotion", {"thresholds": [{"metric": "bleu", "min": 1.0}]}).build(),
        "spec.promotion.thresholds[0].metric",
    ),
    (
        "retention-gate-without-guard",
        JobBuilder().set("spec.promotion", {"maxRetentionRegression": 0.02}).build(),
        "promotion.maxRetentionRegression requires forgettingGuard",
    ),
    (
        "model-from-job-and-cached",
        JobBuilder().set("spec.model.fromJob", "earlier").build(),
        "exactly one of pvc, uri, cached, huggingFace or fromJob",
    ),
    ("sweep-grid-over-a-range", sweep(parameters=[RANGE]), "algorithm Grid needs values on every parameter"),
    (
        "sweep-duplicate-paths",
        sweep(parameters=[{"path": "training.epochs", "values": [1]}, {"path": "training.epochs", "values": [2]}]),
        "parameters[].path must be unique",
    ),
    (
        "sweep-values-and-range",
        sweep(algorithm="Random", parameters=[{**RANGE, "values": [0.1]}]),
        "set either values, or min and max",
    ),
    (
        "sweep-log-range-from-zero",
        sweep(algorithm="Random", parameters=[{**RANGE, "min": 0.0}]),
        "min must be below max, and above 0 on a log scale",
    ),
    ("sweep-bad-objective", sweep(objective={"metric": "accuracy"}), "spec.objective.metric"),
    ("sweep-name-too-long", sweep("s" * 49), "metadata.name must be at most 48"),
    (
        "sweep-bad-template",
        sweep(template=JobBuilder().set("spec.training.learningRate", 0).build()["spec"]),
        "spec.template.training.learningRate",
    ),
    (
        "image-shell-characters",
        JobBuilder().set("spec.resources.image", "evil; curl x").build(),
        "image must be an OCI image reference",
    ),
    (
        "image-upper-case-name",
        JobBuilder().set("spec.resources.image", "ghcr.io/Kubetune/Trainer:1").build(),
        "image must be an OCI image reference",
    ),
    (
        "image-bad-digest",
        JobBuilder().set("spec.resources.image", "trainer@sha256:xyz").build(),
        "image must be an OCI image reference",
    ),
    (
        "hub-and-cached",
        JobBuilder().set("spec.model.huggingFace", {"repo": "org/model"}).build(),
        "exactly one of pvc, uri, cached, huggingFace or fromJob",
    ),
    (
        "hub-repo-three-parts",
        JobBuilder().drop("spec.model.cached").set("spec.model.huggingFace", {"repo": "a/b/c"}).build(),
        "spec.model.huggingFace.repo",
    ),
    (
        "hub-revision-traversal",
        JobBuilder()
        .drop("spec.model.cached")
        .set("spec.model.huggingFace", {"repo": "org/model", "revision": "main/../x"})
        .build(),
        "revision must not contain '..'",
    ),
    (
        "hub-token-without-key",
        JobBuilder()
        .drop("spec.model.cached")
        .set("spec.model.huggingFace", {"repo": "org/model", "tokenSecretRef": {"name": "hf"}})
        .build(),
        "spec.model.huggingFace.tokenSecretRef.key",
    ),
    (
        "env-overrides-master-addr",
        JobBuilder().set("spec.resources.env", [{"name": "MASTER_ADDR", "value": "x"}]).build(),
        "name MASTER_ADDR is a variable the operator sets",
    ),
    (
        "env-overrides-kubetune-variable",
        JobBuilder().set("spec.resources.env", [{"name": "KUBETUNE_MODEL_CACHE", "value": "/x"}]).build(),
        "name KUBETUNE_MODEL_CACHE is a variable the operator sets",
    ),
    (
        "env-value-and-secret",
        JobBuilder()
        .set(
            "spec.resources.env",
            [{"name": "A", "value": "x", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
        )
        .build(),
        "exactly one of value or valueFrom must be set",
    ),
    (
        "env-bad-name",
        JobBuilder().set("spec.resources.env", [{"name": "A-B", "value": "x"}]).build(),
        "spec.resources.env[0].name",
    ),
    (
        "env-duplicate-names",
        JobBuilder().set("spec.resources.env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]).build(),
        "env names must be unique",
    ),
    (
        "credentials-on-gcs",
        JobBuilder()
        .set("spec.data.datasets[1]", {"name": "g", "uri": "gs://b/x.jsonl", "credentialsSecretRef": {"name": "k"}})
        .build(),
        "credentialsSecretRef and endpoint need an s3:// uri",
    ),
    (
        "endpoint-on-pvc",
        JobBuilder().set("spec.data.datasets[0].endpoint", "http://minio:9000").build(),
        "credentialsSecretRef and endpoint need an s3:// uri",
    ),
    (
        "endpoint-not-http",
        JobBuilder()
        .set("spec.data.datasets[1]", {"name": "s", "uri": "s3://b/x.jsonl", "endpoint": "ftp://minio"})
        .build(),
        "spec.data.datasets[1].endpoint",
    ),
    (
        "hub-dataset-files-and-split",
        JobBuilder()
        .set(
            "spec.data.datasets[1]",
            {"name": "h", "huggingFace": {"repo": "org/rows", "files": ["a.jsonl"], "split": "train"}},
        )
        .build(),
        "exactly one of files or split",
    ),
    (
        "hub-dataset-file-outside",
        JobBuilder()
        .set("spec.data.datasets[1]", {"name": "h", "huggingFace": {"repo": "org/rows", "files": ["../a.jsonl"]}})
        .build(),
        "files must be paths inside the repository",
    ),
    (
        "env-from-both",
        JobBuilder()
        .set("spec.resources.envFrom", [{"secretRef": {"name": "s"}, "configMapRef": {"name": "c"}}])
        .build(),
        "exactly one of secretRef or configMapRef must be set",
    ),
]

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("minimal", JobBuilder().build()),
    (
        "image-references",
        JobBuilder()
        .set("spec.resources.image", "localhost:5000/kubetune/trainer:0.1.0-rc.1@sha256:" + "a" * 64)
        .build(),
    ),
    ("image-short-name", JobBuilder().set("spec.resources.image", "trainer").build()),
    ("qlora-with-knobs", JobBuilder().set("spec.method", {"type": "QLoRA", "quantization": QLORA_KNOBS}).build()),
    (
        "integer-cpu-and-learning-rate",
        JobBuilder().set("spec.resources.cpu", 4).set("spec.training.learningRate", 1).build(),
    ),
    (
        "classification",
        JobBuilder()
        .set("spec.task", {"type": "Classification", "labels": ["neg", "pos"]})
        .set("spec.data.format", "Classification")
        .set("spec.validation", {"metric": "F1"})
        .build(),
    ),
    (
        "explicit-test-file",
        JobBuilder()
        .set("spec.data.datasets[1]", {"name": "test", "configMap": {"name": "cm", "key": "test.csv"}, "usage": "Test"})
        .build(),
    ),
    ("name-at-limit", JobBuilder(name="x" * 52).build()),
    (
        "fsdp-full-on-gpus",
        JobBuilder()
        .set("spec.training.distributed", "FSDP")
        .set("spec.method.type", "Full")
        .set("spec.resources.gpusPerWorker", 8)
        .build(),
    ),
    ("fsdp-full-on-cpu", JobBuilder().set("spec.training.distributed", "FSDP").set("spec.method.type", "Full").build()),
    (
        "everything-of-issue-7",
        JobBuilder()
        .set("spec.data.datasets[0].task", "qa")
        .set("spec.data.datasets[0].weight", 2.0)
        .set("spec.data.datasets[1]", {"name": "docs", "uri": "s3://b/docs.jsonl", "task": "docs"})
        .set("spec.data.datasets[2]", GENERAL)
        .set("spec.data.mixing", {"strategy": "Temperature", "temperature": 3.0})
        .set("spec.data.augmentation", {"copies": 2, "wordDropout": 0.1, "tokenNoise": 0.05})
        .set("spec.training.labelSmoothing", 0.1)
        .set("spec.training.neftuneNoiseAlpha", 5.0)
        .set("spec.training.dropout", 0.1)
        .set("spec.evaluation.fewShot", {"k": 3})
        .set("spec.forgettingGuard", {"replayRatio": 0.2, "maxRegression": 0.02, "onRegression": "Fail"})
        .set("spec.contextExtension", {"ropeScaling": "YaRN", "targetLength": 4096, "passkeySamples": 3})
        .set(
            "spec.stages",
            [
                {"name": "domain", "datasets": ["docs"], "format": "Completion"},
                {"name": "instruct", "datasets": ["train"], "training": {"epochs": 1}},
            ],
        )
        .build(),
    ),
    (
        "everything-of-issue-8",
        JobBuilder()
        .set("spec.output", {"pvc": {"claimName": "out"}, "mergeAdapter": True})
        .set(
            "spec.promotion",
            {"thresholds": [{"metric": "f1", "min": 0.8}, {"metric": "loss", "max": 2.0}], "beatBaseModel": True},
        )
        .set("spec.deploy", {"replicas": 2, "merged": True, "port": 9000, "maxNewTokens": 64})
        .set("spec.data.datasets[0].version", "2026-11")
        .build(),
    ),
    ("continuous-tuning", JobBuilder().drop("spec.model.cached").set("spec.model.fromJob", "earlier").build()),
    (
        "s3-everywhere-with-credentials",
        JobBuilder()
        .drop("spec.model.cached")
        .set("spec.model", {"uri": "s3://models/base", "credentialsSecretRef": {"name": "models-keys"}})
        .set(
            "spec.data.datasets[1]",
            {
                "name": "s3",
                "uri": "s3://data/rows.jsonl",
                "endpoint": "http://minio:9000",
                "credentialsSecretRef": {"name": "data-keys"},
            },
        )
        .set(
            "spec.output",
            {
                "uri": "s3://out/run",
                "credentialsSecretRef": {"name": "data-keys"},
                "endpoint": "https://s3.example.com",
            },
        )
        .build(),
    ),
    (
        "hub-dataset-split-with-token",
        JobBuilder()
        .set(
            "spec.data.datasets[1]",
            {
                "name": "h",
                "huggingFace": {
                    "repo": "org/rows",
                    "revision": "v2",
                    "split": "train",
                    "tokenSecretRef": {"name": "t", "key": "k"},
                },
            },
        )
        .build(),
    ),
    (
        "hub-model-with-token-and-env",
        JobBuilder()
        .drop("spec.model.cached")
        .set(
            "spec.model.huggingFace",
            {
                "repo": "HuggingFaceTB/SmolLM2-135M",
                "revision": "v1.0",
                "tokenSecretRef": {"name": "hf-token", "key": "token"},
            },
        )
        .set(
            "spec.resources.env",
            [
                {"name": "HF_ENDPOINT", "value": "https://hub.example.com"},
                {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "w", "key": "k"}}},
            ],
        )
        .set("spec.resources.envFrom", [{"secretRef": {"name": "s3"}}, {"configMapRef": {"name": "c"}, "prefix": "X_"}])
        .build(),
    ),
    (
        "random-sweep",
        sweep(
            algorithm="Random",
            seed=3,
            maxTrials=20,
            maxParallel=4,
            parameters=[RANGE, {"path": "method.lora.rank", "min": 4, "max": 64, "integer": True}],
            objective={"metric": "test.f1", "goal": "Maximize"},
            earlyStopping={"afterPercent": 30},
        ),
    ),
]
