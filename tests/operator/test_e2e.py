"""End to end: kubectl apply -> operator -> Indexed Job -> local node agent -> real trainer on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.operator.conftest import wait_for
from tests.support.builders import JobBuilder
from tests.support.controlplane import ControlPlane
from tests.support.nodeagent import NodeAgent
from tests.support.operator import Operator

pytestmark = pytest.mark.usefixtures("operator")


def e2e_job(name: str, workers: int = 2) -> JobBuilder:
    return (
        JobBuilder(name)
        .set(
            "spec.data.datasets[0]",
            {"name": "rows", "pvc": {"claimName": "kubetune-data", "path": "instructions.jsonl"}},
        )
        .set("spec.data.split", {"validationRatio": 0.1, "testRatio": 0.1, "seed": 7})
        .set("spec.method", {"type": "LoRA", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}})
        .set("spec.training", {"learningRate": 0.01, "epochs": 2, "perDeviceBatchSize": 8, "maxSeqLength": 96})
        .set("spec.evaluation", {"maxSamples": 4, "maxNewTokens": 4})
        .set("spec.checkpointing", {"everySteps": 2, "keep": 2})
        .set("spec.resources", {"workers": workers, "cpu": "1", "memory": "2Gi"})
        .set("spec.output", {"pvc": {"claimName": "kubetune-outputs", "path": name}})
    )


class Cluster:
    """kubectl helpers for one test."""

    def __init__(self, cluster: ControlPlane, node: NodeAgent, operator: Operator) -> None:
        self.cp, self.node, self.operator = cluster, node, operator

    def apply(self, doc: dict[str, Any]) -> None:
        self.cp.kubectl("apply", "-f", "-", input=json.dumps(doc))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.cp.kubectl("get", kind, name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def ftj(self, name: str) -> dict[str, Any]:
        return self.get("finetunejob", name) or {}

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        for c in self.ftj(name).get("status", {}).get("conditions", []):
            if c["type"] == kind:
                return dict(c)
        return {}

    def pods(self, name: str) -> list[dict[str, Any]]:
        out = self.cp.kubectl("get", "pods", "-l", f"kubetune.dev/finetunejob={name}", "-o", "json")
        return list(json.loads(out.stdout)["items"])

    def diagnose(self, name: str) -> str:
        ftj = json.dumps(self.ftj(name).get("status"), indent=1)
        job = json.dumps((self.get("job", f"{name}-workers") or {}).get("status"), indent=1)
        pods = "\n".join(
            f"--- {p['metadata']['name']} {p['status'].get('phase')}\n"
            + self.node.logs("default", p["metadata"]["name"])[-3000:]
            for p in self.pods(name)
        )
        return f"status: {ftj}\njob: {job}\n{pods}\noperator:\n{self.operator.log()[-5000:]}"

    def wait_condition(self, name: str, kind: str, timeout: float = 300) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            c = self.condition(name, kind)
            if kind != "Failed" and self.condition(name, "Failed").get("status") == "True":
                raise AssertionError(f"{name} failed: {self.diagnose(name)}")
            return c if c.get("status") == "True" else None

        return wait_for(f"{name} {kind}", check, timeout, lambda: self.diagnose(name))  # type: ignore[no-any-return]


@pytest.fixture
def k(cluster: ControlPlane, node: NodeAgent, operator: Operator) -> Cluster:
    return Cluster(cluster, node, operator)


def test_two_workers_train_to_success(k: Cluster, volumes: dict[str, Path]) -> None:
    k.apply(e2e_job("two-workers").build())
    k.wait_condition("two-workers", "Succeeded")
    status = k.ftj("two-workers")["status"]
    assert status["phase"] == "Succeeded"
    assert status["outputLocation"] == "pvc://kubetune-outputs/two-workers"
    assert status["evaluation"]["test"]["loss"] > 0 and "loss" in status["evaluation"]["baseline"]
    assert status["progress"]["percentage"] == 100 and status["workers"]["succeeded"] == 2
    assert status["checkpoint"]["location"].startswith("pvc://kubetune-outputs/two-workers/checkpoints/step-")
    out = volumes["kubetune-outputs"] / "two-workers"
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "manifest.json").read_text())["worldSize"] == 2
    printed = k.cp.kubectl("get", "ftj", "two-workers").stdout
    assert "Succeeded" in printed and "LoRA" in printed and "100" in printed
