"""What the end-to-end tests share: a small two-worker job and kubectl helpers on the session's control plane
(``tests/conftest.py``), node agent and operator (``conftest.py``)."""

from __future__ import annotations

import json
from typing import Any

from tests.support.builders import JobBuilder
from tests.support.controlplane import ControlPlane
from tests.support.nodeagent import NodeAgent
from tests.support.operator import Operator
from tests.support.wait import wait_for


def e2e_job(name: str, workers: int = 2) -> JobBuilder:
    return (
        JobBuilder(name)
        .set(
            "spec.data.datasets[0]",
            {"name": "rows", "pvc": {"claimName": "kubetune-data", "path": "examples/data/instructions.jsonl"}},
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

    def where_secrets_could_leak(self, name: str) -> dict[str, str]:
        """The text of every place a Secret's value must never reach: the job, events, ConfigMaps, children, logs."""
        return {
            "the FineTuneJob and its status": json.dumps(self.ftj(name)),
            "events": self.cp.kubectl("get", "events", "-o", "json").stdout,
            "ConfigMaps": self.cp.kubectl("get", "configmaps", "-o", "json").stdout,
            "Jobs and pods": self.cp.kubectl("get", "jobs,pods", "-o", "json").stdout,
            "worker logs": "".join(self.node.logs("default", p["metadata"]["name"]) for p in self.pods(name)),
            "operator log": self.operator.log(),
        }

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


def resumed_from(k: Cluster, name: str) -> int:
    """The step the successful rank-0 pod resumed training from (its "phase: Training" log line)."""
    for pod in k.pods(name):
        if pod["metadata"]["name"].startswith(f"{name}-workers-0-") and pod["status"]["phase"] == "Succeeded":
            for line in k.node.logs("default", pod["metadata"]["name"]).splitlines():
                if line.startswith('{"event": "phase", "phase": "Training"'):
                    return int(json.loads(line)["resumedFromStep"])
    raise AssertionError(f"no successful rank-0 pod of {name} logged its start: {k.diagnose(name)}")


def running_with_checkpoint(k: Cluster, name: str) -> dict[str, Any] | None:
    status = k.ftj(name).get("status", {})
    done = status.get("progress", {}).get("percentage", 0)
    return status if status.get("checkpoint") and status.get("phase") == "Running" and done < 80 else None
