"""The operator's pure parts: child manifests, semantic validation, and status from observed children."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api.spec import parse_job
from kubetune.api.status import FineTuneJobStatus
from kubetune.api.wire import TrainerProgress
from kubetune.operator import builders, children, status, validation
from kubetune.operator.naming import child_name
from kubetune.operator.settings import Settings
from tests.support.builders import JobBuilder, pod, worker_job

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SETTINGS = Settings()


def wire(report: dict[str, Any]) -> TrainerProgress:
    """Rank 0's /progress document, parsed as the operator parses it."""
    parsed = TrainerProgress.read(report)
    assert parsed is not None
    return parsed


def job(builder: JobBuilder | None = None, **status_doc: Any) -> Any:
    doc = (builder or JobBuilder("demo")).build()
    doc["metadata"].update(namespace="team", generation=2)
    if status_doc:
        doc["status"] = status_doc
    return parse_job(doc)


def two_workers() -> JobBuilder:
    return (
        JobBuilder("demo")
        .set("spec.resources", {"workers": 2, "gpusPerWorker": 4, "queue": "team-ml", "priorityClassName": "high"})
        .set("spec.output", {"pvc": {"claimName": "out", "path": "demo"}})
        .set("spec.maxRestarts", 2)
        .set("spec.activeDeadlineSeconds", 3600)
    )


# Builders


def test_children_have_deterministic_names_and_the_job_last() -> None:
    kinds = [(c["kind"], c["metadata"]["name"]) for c in builders.children(job(), SETTINGS)]
    assert kinds == [("ConfigMap", "demo-spec"), ("Service", "demo-workers"), ("Job", "demo-workers")]
    assert builders.children(job(), SETTINGS) == builders.children(job(), SETTINGS)


def test_long_names_stay_within_63_characters() -> None:
    name = child_name("x" * 60, "workers")
    assert len(name) <= 63 and name.endswith("-workers") and name == child_name("x" * 60, "workers")


def test_worker_job_is_indexed_torchrun_with_rendezvous_on_worker_0() -> None:
    manifest = builders.worker_job(job(two_workers()), SETTINGS)
    spec = manifest["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 4 and spec["activeDeadlineSeconds"] == 3600 and spec["suspend"] is False
    assert manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-ml"
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "demo-workers" and pod["restartPolicy"] == "Never"
    assert pod["priorityClassName"] == "high" and pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["NNODES"] == "2" and env["NPROC_PER_NODE"] == "4"
    assert env["MASTER_ADDR"] == "demo-workers-0.demo-workers"
    assert "job-completion-index" in env["NODE_RANK"]["fieldRef"]["fieldPath"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["args"] == ["launch", "/etc/kubetune/job.json"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_pod_failure_policy_fails_at_once_on_configuration_and_divergence() -> None:
    rules = builders.worker_job(job(), SETTINGS)["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [3, 4, 78]},
    }
    assert rules[1]["action"] == "Ignore"


def test_volumes_mount_each_claim_once_and_only_the_output_writable() -> None:
    b = two_workers().set("spec.data.datasets[1]", {"name": "more", "pvc": {"claimName": "data", "path": "b.jsonl"}})
    b.set("spec.data.datasets[2]", {"name": "inline", "configMap": {"name": "rows", "key": "a.jsonl"}})
    pod = builders.worker_job(job(b), SETTINGS)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/pvc/data"] is True and mounts["/mnt/pvc/out"] is False
    assert mounts["/mnt/models"] is True and mounts["/mnt/configmaps/rows"] is True
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert sorted(claims) == ["data", "kubetune-models", "out"]


RESTRICTED_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


@pytest.mark.parametrize("engine", ["Transformers", "VLLM", None])
def test_every_child_pod_runs_restricted_non_root_and_read_only_where_the_image_allows(engine: str | None) -> None:
    from kubetune.operator import serving

    b = two_workers().set("spec.resources.image", "example.com/custom-trainer:1")
    if engine is None:
        pod = builders.worker_job(job(b), SETTINGS)["spec"]["template"]["spec"]
    else:
        b.set("spec.deploy", {"engine": engine, "gpus": 1}).set("spec.method", {"type": "Full"})
        pod = serving.children(job(b), SETTINGS)[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"] == RESTRICTED_POD and pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": engine != "VLLM",  # vLLM's image writes outside /tmp
        "capabilities": {"drop": ["ALL"]},
    }
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["HOME"] == "/tmp" and {"/tmp", "/scratch"} <= mounts  # writable places on a read-only root
    empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] in ("/tmp", "/scratch")} <= empty


def test_spec_config_map_holds_the_resolved_spec() -> None:
    data = json.loads(builders.spec_config_map(job())["data"]["job.json"])
    assert data["metadata"] == {"name": "demo", "namespace": "team"}
    assert data["spec"]["training"]["epochs"] >= 1  # defaults filled in
    assert parse_job(data).spec == job().spec


# Validation


@pytest.mark.parametrize(
    ("output_path", "data_path", "problem"),
    [
        ("", "train.jsonl", True),
        ("train.jsonl", "train.jsonl", True),
        ("runs/a", "runs", True),
        ("runs/a", "data/train.jsonl", False),
    ],
)
def test_output_must_not_overlap_the_data(output_path: str, data_path: str, problem: bool) -> None:
    b = JobBuilder().set("spec.data.datasets[0].pvc", {"claimName": "data", "path": data_path})
    b.set("spec.output", {"pvc": {"claimName": "data", "path": output_path}})
    found = validation.problems(job(b).spec)
    assert bool(found) == problem
    if problem:
        assert found[0].startswith("spec.output.pvc.path:") and "datasets[0]" in found[0]


def test_several_workers_need_an_output() -> None:
    found = validation.problems(job(JobBuilder().set("spec.resources", {"workers": 2})).spec)
    assert found == [f for f in found if f.startswith("spec.output:")] and found


def test_missing_references_name_the_field() -> None:
    b = JobBuilder().set("spec.data.datasets[1]", {"name": "inline", "configMap": {"name": "rows", "key": "a.jsonl"}})
    spec = job(b).spec
    found = validation.missing_references(spec, "kubetune-models", {"kubetune-models"}, {"rows": {"b.jsonl"}})
    assert found == [
        "spec.data.datasets[0].pvc.claimName: PersistentVolumeClaim 'data' does not exist",
        "spec.data.datasets[1].configMap.key: ConfigMap 'rows' has no key 'a.jsonl'",
    ]
    assert not validation.missing_references(
        spec, "kubetune-models", {"data", "kubetune-models"}, {"rows": {"a.jsonl"}}
    )


def test_several_workers_need_claims_every_node_can_mount() -> None:
    b = JobBuilder().set("spec.resources", {"workers": 2})
    b.set("spec.output", {"pvc": {"claimName": "out", "path": "run"}})
    spec = job(b).spec
    rwx, rwo, rox = {"ReadWriteMany"}, {"ReadWriteOnce"}, {"ReadOnlyMany"}
    assert validation.access_problems(spec, "kubetune-models", {"data": rox, "out": rwx}) == []
    found = validation.access_problems(spec, "kubetune-models", {"data": rwo, "out": rox})
    assert len(found) == 2
    assert found[0].startswith("spec.data.datasets[0].pvc.claimName: PersistentVolumeClaim 'data' has access ")
    assert "['ReadWriteOnce']" in found[0] and "ReadOnlyMany or ReadWriteMany needed" in found[0]
    assert found[1].startswith("spec.output.pvc.claimName: PersistentVolumeClaim 'out'")
    assert "ReadWriteMany needed" in found[1] and "spec.output.uri" in found[1] and "workers: 1" in found[1]
    assert validation.access_problems(spec, "kubetune-models", {"data": rwo}) == [f for f in found if "'data'" in f]
    one = job(b.set("spec.resources", {"workers": 1})).spec
    assert validation.access_problems(one, "kubetune-models", {"data": rwo, "out": rwo}) == []


# Status


def accepted_job(builder: JobBuilder | None = None) -> Any:
    accepted = {
        "type": "Accepted",
        "status": "True",
        "reason": "SpecValid",
        "message": "ok",
        "lastTransitionTime": "2026-11-25T10:00:00Z",
    }
    return job(builder or two_workers(), conditions=[accepted])


def conditions(s: FineTuneJobStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in s.conditions}


def test_running_status_takes_progress_from_rank_0() -> None:
    report = {
        "phase": "Training",
        "step": 25,
        "totalSteps": 100,
        "epoch": 1,
        "loss": 1.5,
        "learningRate": 1e-4,
        "etaSeconds": 60.0,
        "checkpointStep": 20,
        "checkpointTime": NOW.timestamp(),
    }
    s, transitions = status.compute(
        accepted_job(), worker_job(active=2), [pod(0, "Running"), pod(1, "Running")], wire(report), NOW
    )
    assert s.phase == "Running" and conditions(s)["Running"] == ("True", "Training")
    assert s.progress is not None and (s.progress.step, s.progress.percentage) == (25, 25)
    assert s.progress.estimated_completion_time == NOW + timedelta(seconds=60)
    assert s.metrics is not None and s.metrics.loss == 1.5
    assert s.checkpoint is not None and s.checkpoint.location == "pvc://out/demo/checkpoints/step-00000020"
    assert s.observed_generation == 2 and s.start_time == datetime(2026, 11, 25, 11, tzinfo=UTC)
    assert [t.reason for t in transitions] == ["Training"]


def test_transition_time_moves_only_when_the_status_changes() -> None:
    first, _ = status.compute(accepted_job(), worker_job(active=2), [pod(0, "Running"), pod(1, "Running")], None, NOW)
    again_job = accepted_job()
    again_job.status = first
    later = NOW + timedelta(minutes=5)
    second, transitions = status.compute(
        again_job, worker_job(active=2), [pod(0, "Running"), pod(1, "Running")], None, later
    )
    running = next(c for c in second.conditions if c.type == "Running")
    assert running.last_transition_time == NOW and transitions == []


def test_pending_workers() -> None:
    s, _ = status.compute(accepted_job(), worker_job(active=2), [pod(0, "Running"), pod(1, "Pending")], None, NOW)
    assert s.phase == "Pending" and conditions(s)["Running"] == ("False", "WorkersPending")


def test_success_reads_test_metrics_from_rank_0s_termination_message() -> None:
    final = {
        "epoch": 2,
        "loss": 0.9,
        "learningRate": 0.0,
        "tokensPerSecond": 2100.5,
        "validationLoss": 1.1,
        "bestValidationMetric": 1.0,
        "bestStep": 30,
        "lastValidationMetric": 1.1,
        "deliveredStep": 30,
        "checkpointStep": 40,
        "checkpointTime": 1_700_000_000.0,
    }
    summary = json.dumps(
        {"phase": "Succeeded", "steps": 40, "test": {"loss": 1.2}, "baseline": {"loss": 3.4}, "final": final}
    )
    pods = [pod(0, "Succeeded", 0, summary), pod(1, "Succeeded", 0)]
    s, transitions = status.compute(accepted_job(), worker_job("Complete", succeeded=2), pods, None, NOW)
    assert s.phase == "Succeeded" and conditions(s)["Succeeded"] == ("True", "Completed")
    assert s.evaluation is not None and s.evaluation.test == {"loss": 1.2} and s.evaluation.baseline == {"loss": 3.4}
    assert s.progress is not None and (s.progress.step, s.progress.percentage, s.progress.epoch) == (40, 100, 2)
    assert s.metrics is not None and (s.metrics.loss, s.metrics.tokens_per_second, s.metrics.validation_loss) == (
        0.9,
        2100.5,
        1.1,
    )
    assert (s.metrics.best_step, s.metrics.delivered_step, s.metrics.last_validation_metric) == (30, 30, 1.1)
    # the last checkpoint, though no /progress read came between it and the end
    assert s.checkpoint is not None and (s.checkpoint.step, s.checkpoint.time.timestamp()) == (40, 1_700_000_000.0)
    assert s.checkpoint.location == "pvc://out/demo/checkpoints/step-00000040"
    assert s.output_location == "pvc://out/demo" and s.completion_time is not None
    assert ("Succeeded", "Completed") in [(t.type, t.reason) for t in transitions]


def test_data_warnings_turn_data_sufficient_false_with_the_trainers_words() -> None:
    warning = "test split is empty: no test metrics and no comparison with the base model; raise spec.data..."
    running = [pod(0, "Running"), pod(1, "Running")]
    report = {"phase": "EvaluatingBaseModel", "dataWarnings": [warning]}
    s, transitions = status.compute(accepted_job(), worker_job(active=2), running, wire(report), NOW)
    assert conditions(s)["DataSufficient"] == ("False", "SmallSplits")
    assert warning in next(c.message for c in s.conditions if c.type == "DataSufficient")
    assert any(t.event_type == "Warning" for t in transitions if t.type == "DataSufficient")
    fine, _ = status.compute(accepted_job(), worker_job(active=2), running, wire({**report, "dataWarnings": []}), NOW)
    assert conditions(fine)["DataSufficient"] == ("True", "SplitsSufficient")


def test_stages_and_the_overfitting_verdict_come_from_rank_0s_progress() -> None:
    overfit = {
        "detected": True,
        "bestStep": 20,
        "bestValidationLoss": 1.0,
        "step": 40,
        "validationLoss": 1.3,
        "trainLossAtBest": 0.9,
        "trainLoss": 0.4,
    }
    stages = [
        {"name": "domain", "phase": "Succeeded", "steps": 30, "test": {"loss": 2.0}},
        {"name": "instruct", "phase": "Running"},
    ]
    report = {
        "phase": "Training",
        "step": 40,
        "totalSteps": 100,
        "loss": 0.4,
        "stage": "instruct",
        "stageIndex": 1,
        "stages": stages,
        "overfitting": overfit,
    }
    running = [pod(0, "Running"), pod(1, "Running")]
    s, transitions = status.compute(accepted_job(), worker_job(active=2), running, wire(report), NOW)
    assert s.current_stage == "instruct" and s.stages is not None
    assert [(t.name, t.phase, t.steps) for t in s.stages] == [
        ("domain", "Succeeded", 30),
        ("instruct", "Running", None),
    ]
    assert conditions(s)["Overfitting"] == ("True", "ValidationLossRising")
    text = next(c.message for c in s.conditions if c.type == "Overfitting")
    assert "rose from 1.0 (step 20) to 1.3 (step 40)" in text and "fell from 0.9 to 0.4" in text
    assert ("Overfitting", "ValidationLossRising") in [(t.type, t.reason) for t in transitions]
    assert any(t.event_type == "Warning" for t in transitions if t.type == "Overfitting")
    calm, _ = status.compute(
        accepted_job(), worker_job(active=2), running, wire({**report, "overfitting": {"detected": False}}), NOW
    )
    assert conditions(calm)["Overfitting"] == ("False", "NoOverfitting")


def test_success_reports_few_shot_per_task_retention_and_promotability() -> None:
    retention = {"before": 2.0, "after": 2.2, "regression": 0.1, "maxRegression": 0.02, "passed": False}
    summary = json.dumps(
        {
            "phase": "Succeeded",
            "steps": 40,
            "test": {"loss": 1.2},
            "baseline": {"loss": 3.4},
            "fewShot": {"loss": 2.5},
            "fewShotK": 3,
            "tasks": {"qa": {"loss": 1.1}, "sum": {"loss": 1.3}},
            "retention": retention,
        }
    )
    pods = [pod(0, "Succeeded", 0, summary), pod(1, "Succeeded", 0)]
    guarded = two_workers().set("spec.forgettingGuard", {"maxRegression": 0.02})
    guarded.set("spec.data.datasets[1]", {"name": "general", "uri": "s3://b/g.jsonl", "usage": "General"})
    s, _ = status.compute(accepted_job(guarded), worker_job("Complete", succeeded=2), pods, None, NOW)
    assert s.evaluation is not None and s.evaluation.few_shot == {"loss": 2.5}
    assert s.evaluation.tasks == {"qa": {"loss": 1.1}, "sum": {"loss": 1.3}}
    assert s.retention is not None and (s.retention.regression, s.retention.max_regression) == (0.1, 0.02)
    assert s.phase == "Succeeded" and conditions(s)["Promotable"] == ("False", "GateFailed")
    assert "retention regression <= 2.0% failed" in next(c.message for c in s.conditions if c.type == "Promotable")
    from kubetune.operator import metrics

    metrics.observe("ns", "kept", s)
    assert (
        metrics.registry.get_sample_value(
            "kubetune_finetunejob_retention_regression_ratio", {"namespace": "ns", "finetunejob": "kept"}
        )
        == 0.1
    )
    labels = {"namespace": "ns", "finetunejob": "kept", "metric": "loss", "model": "fewshot"}
    assert metrics.registry.get_sample_value("kubetune_finetunejob_eval_metric", labels) == 2.5
    metrics.forget("ns", "kept")


@pytest.mark.parametrize(
    ("code", "message", "reason", "expected"),
    [
        (78, json.dumps({"message": "spec.data.datasets[0]: row 3 is empty"}), "ConfigurationError", "row 3"),
        (
            78,
            json.dumps({"reason": "DataChangedError", "message": "spec.data.datasets[0] (rows): the content changed"}),
            "DataChanged",
            "datasets[0] (rows)",
        ),
        (3, json.dumps({"message": "loss is nan at step 7"}), "Diverged", "step 7"),
        (4, json.dumps({"message": "retention loss rose 7.0%"}), "RetentionRegressed", "rose 7.0%"),
        (137, "Traceback ...\nMemoryError: out of memory", "RestartsExhausted", "MemoryError"),
    ],
)
def test_failure_reason_and_the_workers_words_reach_the_failed_condition(
    code: int, message: str, reason: str, expected: str
) -> None:
    pods = [pod(0, "Failed", code, message), pod(1, "Failed", 1, "peer went away")]
    s, transitions = status.compute(accepted_job(), worker_job("Failed", failed=2), pods, None, NOW)
    failed = next(c for c in s.conditions if c.type == "Failed")
    assert s.phase == "Failed" and failed.reason == reason and expected in failed.message
    assert s.restarts == 0  # one round of failures, not restarted
    assert transitions[-1].event_type == "Warning"


def test_deadline_exceeded() -> None:
    job_doc = worker_job("Failed", failed=0)
    job_doc["status"]["conditions"][0]["reason"] = "DeadlineExceeded"
    s, _ = status.compute(accepted_job(), job_doc, [], None, NOW)
    assert conditions(s)["Failed"] == ("True", "DeadlineExceeded")


def test_worker_failure_while_restarting_counts_restarts() -> None:
    pods = [pod(0, "Failed", 137, "killed"), pod(1, "Pending")]
    s, _ = status.compute(accepted_job(), worker_job(active=1, failed=2), pods, None, NOW)
    assert s.restarts == 1 and conditions(s)["Running"] == ("False", "WorkerFailed")


def test_a_worker_killed_at_its_memory_limit_is_out_of_memory_naming_the_limit() -> None:
    b = JobBuilder("demo").set("spec.resources", {"workers": 2, "cpu": "1", "memory": "3Gi"})
    oom = [pod(0, "Failed", 1, "peer went away"), pod(1, "Failed", 137, "", reason="OOMKilled")]
    s, _ = status.compute(accepted_job(b), worker_job(active=0, failed=2), [*oom, pod(0, "Pending")], None, NOW)
    running = next(c for c in s.conditions if c.type == "Running")
    assert (running.status, running.reason) == ("False", "OutOfMemory")
    assert running.message.startswith("Worker 1 was killed for using more memory than its limit, ")
    assert "spec.resources.memory (3Gi) (OOMKilled)" in running.message and "1 of 3 restarts used" in running.message
    s, _ = status.compute(accepted_job(b), worker_job("Failed", failed=8), oom, None, NOW)
    assert conditions(s)["Failed"] == ("True", "OutOfMemory")
    assert "failed 8 times" in next(c for c in s.conditions if c.type == "Failed").message
    plain = [pod(0, "Failed", 137, "killed", reason="Error"), pod(1, "Pending")]
    s, _ = status.compute(accepted_job(b), worker_job(active=1, failed=1), plain, None, NOW)
    assert conditions(s)["Running"] == ("False", "WorkerFailed")  # a SIGKILL that is not the OOM killer's


def test_suspend_keeps_progress_then_resume_clears_suspended() -> None:
    report = {"step": 10, "totalSteps": 100}
    running, _ = status.compute(
        accepted_job(), worker_job(active=2), [pod(0, "Running"), pod(1, "Running")], wire(report), NOW
    )
    j = accepted_job()
    j.status = running
    suspended, transitions = status.compute(j, worker_job("Suspended", suspend=True), [], None, NOW)
    assert suspended.phase == "Suspended" and suspended.progress is not None and suspended.progress.step == 10
    assert ("Suspended", "Suspended") in [(t.type, t.reason) for t in transitions]
    j.status = suspended
    resumed, _ = status.compute(j, worker_job(active=2), [pod(0, "Pending")], None, NOW)
    assert conditions(resumed)["Suspended"] == ("False", "Resumed")


def test_ttl_after_finished() -> None:
    done = FineTuneJobStatus.model_validate_json('{"phase": "Succeeded", "completionTime": "2026-11-25T11:00:00Z"}')
    assert status.due(status.expires_at(done, 3600), NOW) and not status.due(status.expires_at(done, 3601), NOW)
    assert not status.due(status.expires_at(done, None), NOW)


def test_metrics_export_a_jobs_phase_workers_and_eta_and_forget_it() -> None:
    from kubetune.operator import metrics

    eta = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    status = FineTuneJobStatus.model_validate_json(
        json.dumps(
            {
                "phase": "Running",
                "workers": {"active": 2},
                "progress": {"step": 3, "totalSteps": 12, "estimatedCompletionTime": eta.isoformat()},
            }
        )
    )
    metrics.observe("ml", "m1", status)
    job_labels = {"namespace": "ml", "finetunejob": "m1"}

    def value(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {**job_labels, **labels})

    assert value("kubetune_finetunejob_status_phase", phase="Running") == 1
    assert value("kubetune_finetunejob_status_phase", phase="Failed") == 0
    assert value("kubetune_finetunejob_workers", state="active") == 2
    assert value("kubetune_finetunejob_progress_ratio") == 0.25
    assert value("kubetune_finetunejob_estimated_completion_timestamp_seconds") == eta.timestamp()
    errors = {"handler": "create", "outcome": "error"}
    assert metrics.registry.get_sample_value("kubetune_reconcile_errors_total", errors) == 0
    metrics.forget("ml", "m1")
    assert value("kubetune_finetunejob_status_phase", phase="Running") is None
    assert value("kubetune_finetunejob_workers", state="active") is None
    assert value("kubetune_finetunejob_estimated_completion_timestamp_seconds") is None


def test_job_counts_by_phase_follow_moves_and_deletions() -> None:
    from kubetune.operator import metrics

    def count(phase: str) -> float | None:
        return metrics.registry.get_sample_value("kubetune_finetunejobs", {"phase": phase})

    before = {p: count(p) or 0 for p in ("Pending", "Running", "Failed")}
    assert count("Failed") is not None  # every phase is exported from the start, at 0
    for name in ("c1", "c2"):
        metrics.observe("counts", name, FineTuneJobStatus.model_validate_json('{"phase": "Pending"}'))
    metrics.observe("counts", "c1", FineTuneJobStatus.model_validate_json('{"phase": "Running"}'))
    metrics.observe("counts", "c1", FineTuneJobStatus.model_validate_json('{"phase": "Running"}'))  # no double count
    assert count("Pending") == before["Pending"] + 1 and count("Running") == before["Running"] + 1
    metrics.forget("counts", "c1")
    metrics.forget("counts", "c2")
    assert count("Pending") == before["Pending"] and count("Running") == before["Running"]


def test_status_inputs_change_with_any_object_and_ttl_deadline() -> None:
    body = {"metadata": {"resourceVersion": "7"}}
    worker = {"metadata": {"resourceVersion": "8"}}
    pods = [{"metadata": {"resourceVersion": "10"}}, {"metadata": {"resourceVersion": "9"}}]
    same = status.inputs_version(body, worker, list(reversed(pods)))
    assert status.inputs_version(body, worker, pods) == same  # order of the index does not matter
    assert status.inputs_version(body, worker, pods[:1]) != same
    assert status.inputs_version(body, None, pods) != same
    assert status.inputs_version({"metadata": {"resourceVersion": "11"}}, worker, pods) != same
    done = FineTuneJobStatus.model_validate_json('{"phase": "Failed", "completionTime": "2026-11-25T11:00:00Z"}')
    deadline = status.expires_at(done, 60)
    assert deadline == datetime(2026, 11, 25, 11, 1, tzinfo=UTC)
    assert status.due(deadline, NOW) and not status.due(None, NOW)
    assert status.expires_at(FineTuneJobStatus(), 60) is None


def test_kopf_bookkeeping_lives_in_memory_and_goes_with_the_object() -> None:
    import kopf

    from kubetune.operator.persistence import MemoryDiffBaseStorage, MemoryProgressStorage

    body = kopf.Body({"metadata": {"uid": "u1", "name": "a", "annotations": {}}, "spec": {"epochs": 1}})
    progress, patch = MemoryProgressStorage(prefix="kubetune.dev"), kopf.Patch()
    progress.store(key="create", record={"retries": 1, "success": False}, body=body, patch=patch)
    assert progress.fetch(key="create", body=body) == {"retries": 1, "success": False}
    progress.purge(key="create", body=body, patch=patch)
    assert progress.fetch(key="create", body=body) is None
    progress.store(key="create", record={"retries": 2}, body=body, patch=patch)
    progress.forget("u1")
    assert progress.fetch(key="create", body=body) is None
    assert not patch  # nothing written to the object
    progress.touch(body=body, patch=patch, value="now")  # a delayed retry still wakes through an annotation
    assert patch["metadata"]["annotations"]["kubetune.dev/touch-dummy"] == "now"

    diffbase = MemoryDiffBaseStorage()
    essence = diffbase.build(body=body)
    assert diffbase.fetch(body=body) is None
    diffbase.store(body=body, patch=kopf.Patch(), essence=essence)
    assert diffbase.fetch(body=body) == essence
    diffbase.forget("u1")
    assert diffbase.fetch(body=body) is None


def _succeeded(builder: JobBuilder, test: dict[str, float], baseline: dict[str, float], **extra: Any) -> Any:
    summary = json.dumps({"phase": "Succeeded", "steps": 10, "test": test, "baseline": baseline, **extra})
    pods = [pod(0, "Succeeded", 0, summary), pod(1, "Succeeded", 0)]
    s, transitions = status.compute(accepted_job(builder), worker_job("Complete", succeeded=2), pods, None, NOW)
    return s, transitions


def test_promotion_gate_checks_thresholds_the_base_model_and_retention() -> None:
    gated = two_workers().set(
        "spec.promotion",
        {"thresholds": [{"metric": "loss", "max": 2.0}, {"metric": "exactMatch", "min": 0.5}], "beatBaseModel": True},
    )
    s, transitions = _succeeded(gated, {"loss": 1.5, "exactMatch": 0.25}, {"loss": 3.0})
    assert conditions(s)["Promotable"] == ("False", "GateFailed")
    assert [(c.name, c.passed) for c in s.gate or []] == [
        ("test loss <= 2", True),
        ("test exactMatch >= 0.5", False),
        ("test loss beats the base model (3.0)", True),
    ]
    assert "test exactMatch >= 0.5 failed" in next(c.message for c in s.conditions if c.type == "Promotable")
    assert any(t.type == "Promotable" and t.event_type == "Warning" for t in transitions)
    s, _ = _succeeded(gated, {"loss": 1.5, "exactMatch": 0.75}, {"loss": 3.0})
    assert conditions(s)["Promotable"] == ("True", "GatePassed")
    s, _ = _succeeded(two_workers(), {"loss": 1.5}, {"loss": 1.0})
    assert conditions(s)["Promotable"] == ("True", "NoGate") and s.gate is None


def test_serving_children_and_status() -> None:
    from kubetune.operator import serving

    doc = two_workers().set("spec.deploy", {"port": 18080, "maxNewTokens": 32})
    deployment, service = serving.children(job(doc), SETTINGS)
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "demo-serve"
    assert container["args"] == ["serve", "/etc/kubetune/job.json", "--port=18080", "--max-new-tokens=32"]
    assert all(m["readOnly"] for m in container["volumeMounts"] if m["mountPath"].startswith("/mnt/pvc"))
    assert not pod_spec["automountServiceAccountToken"] and service["spec"]["ports"][0]["port"] == 80
    promoted = accepted_job(doc)
    promoted.status.conditions.append(promoted.status.conditions[0].model_copy(update={"type": "Promotable"}))
    s, transitions = serving.with_server(promoted, {"status": {"readyReplicas": 1}}, NOW)
    assert s.deployment is not None and s.deployment.url == "http://demo-serve.team.svc/v1"
    assert conditions(s)["Deployed"] == ("True", "Serving") and transitions[0].reason == "Serving"
    s, _ = serving.with_server(accepted_job(doc), None, NOW)
    assert conditions(s)["Deployed"] == ("False", "NotPromotable") and s.deployment is None
    vllm = two_workers().set("spec.deploy", {"engine": "VLLM", "gpus": 1}).set("spec.method", {"type": "Full"})
    container = serving.children(job(vllm), SETTINGS)[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["vllm", "serve"] and container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_from_job_resolves_to_the_earlier_jobs_model_or_says_why_not() -> None:
    from kubetune.operator import lineage

    later = job(two_workers().set("spec.model", {"fromJob": "earlier"}))
    earlier = (
        JobBuilder("earlier")
        .set("spec.output", {"pvc": {"claimName": "models", "path": "runs/earlier"}, "mergeAdapter": True})
        .build()
    )
    with pytest.raises(lineage.NotReadyError, match="FineTuneJob earlier does not exist"):
        lineage.resolve(later, None)
    with pytest.raises(lineage.NotReadyError, match="has not succeeded yet"):
        lineage.resolve(later, {**earlier, "status": {"phase": "Running"}})
    with pytest.raises(lineage.ImpossibleError, match="failed"):
        lineage.resolve(later, {**earlier, "status": {"phase": "Failed"}})
    resolved = lineage.resolve(later, {**earlier, "status": {"phase": "Succeeded"}})
    assert resolved.spec.model.pvc is not None and resolved.spec.model.from_job is None
    assert (resolved.spec.model.pvc.claim_name, resolved.spec.model.pvc.path) == ("models", "runs/earlier/merged")
    volumes = builders.worker_job(resolved, SETTINGS)["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": "models", "readOnly": True} in [v.get("persistentVolumeClaim") for v in volumes]
    adapter_only = JobBuilder("earlier").set("spec.output", {"pvc": {"claimName": "models"}}).build()
    with pytest.raises(lineage.ImpossibleError, match=r"needs output\.mergeAdapter"):
        lineage.resolve(later, {**adapter_only, "status": {"phase": "Succeeded"}})


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        (1, 1),
        (4, 4),
        ("2", 2),
        ("500m", 1),
        ("1500m", 1),
        ("2500m", 2),
        ("1.5", 1),
        ("0.1", 1),
        ("3.9", 3),
        ("1k", 1000),
        ("100m", 1),
    ],
)
def test_omp_threads_are_whole_cores_of_the_cpu_quantity(cpu: int | str, expected: int) -> None:
    assert builders.threads(cpu) == expected
    manifest = builders.worker_job(job(JobBuilder("demo").set("spec.resources.cpu", cpu)), SETTINGS)
    env = {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OMP_NUM_THREADS"] == str(expected)


def test_a_hub_model_gets_its_token_from_the_secret_by_reference_and_user_env_comes_through() -> None:
    hub = {"repo": "org/model", "tokenSecretRef": {"name": "hf-token", "key": "token"}}
    spec = JobBuilder("demo").drop("spec.model.cached").set("spec.model.huggingFace", hub)
    wandb = {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "w", "key": "k"}}}
    spec.set("spec.resources.env", [{"name": "HF_ENDPOINT", "value": "http://hub.local"}, wandb])
    spec.set("spec.resources.envFrom", [{"secretRef": {"name": "s3-keys"}}])
    container = builders.worker_job(job(spec), SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    assert env["HF_HUB_OFFLINE"]["value"] == "0" and env["HF_ENDPOINT"]["value"] == "http://hub.local"
    assert env["WANDB_API_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "w", "key": "k"}}
    assert container["envFrom"] == [{"secretRef": {"name": "s3-keys"}}]
    plain = builders.worker_job(job(JobBuilder("demo")), SETTINGS)["spec"]["template"]["spec"]["containers"][0]
    names = {e["name"]: e.get("value") for e in plain["env"]}
    assert "HF_TOKEN" not in names and names["HF_HUB_OFFLINE"] == "1" and "envFrom" not in plain


def test_a_secret_the_kubelet_cannot_find_waits_as_missing_reference_naming_it() -> None:
    waiting = pod(0, "Pending")
    waiting["status"]["containerStatuses"][0]["state"] = {
        "waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}
    }
    s, transitions = status.compute(accepted_job(), worker_job(active=2), [waiting, pod(1, "Pending")], None, NOW)
    assert conditions(s)["Running"] == ("False", "MissingReference") and s.phase == "Pending"
    assert 'worker 0: secret "hf-token" not found' in next(c.message for c in s.conditions if c.type == "Running")
    assert any(t.event_type == "Warning" for t in transitions if t.reason == "MissingReference")


def test_a_worker_held_in_container_creating_is_looked_into_and_a_failed_mount_named() -> None:
    """Issue 39, item 3: the kubelet says why a volume cannot be mounted only in events; a bound worker still
    ContainerCreating after the grace period is looked into, and its FailedMount message is the Running reason."""
    stuck = pod(0, "Pending")
    stuck["metadata"]["name"], stuck["spec"] = "demo-workers-0-abc", {"nodeName": "node-a"}
    stuck["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    unbound, running = pod(1, "Pending"), pod(2, "Running")
    for other in (unbound, running):
        other["metadata"]["name"], other["spec"] = "other", {"nodeName": "node-a"}
    del unbound["spec"]["nodeName"]
    grace = timedelta(seconds=10)
    assert children.creating([stuck, unbound, running], NOW, grace) == ["demo-workers-0-abc"]
    assert children.creating([stuck], datetime(2026, 11, 25, 11, 0, 5, tzinfo=UTC), grace) == []
    said = 'MountVolume.SetUp failed for volume "pv-out" : hostPath type check failed: /x is not a directory'
    s, transitions = status.compute(
        accepted_job(), worker_job(active=1), [stuck], None, NOW, {stuck["metadata"]["name"]: said}
    )
    assert conditions(s)["Running"] == ("False", "VolumeMountFailed") and s.phase == "Pending"
    assert f"demo-workers-0-abc: {said}" in next(c.message for c in s.conditions if c.type == "Running")
    assert any(t.event_type == "Warning" for t in transitions if t.reason == "VolumeMountFailed")


def test_uri_credentials_reach_the_workers_by_reference_one_slot_per_secret() -> None:
    spec = JobBuilder("demo").drop("spec.model.cached")
    spec.set("spec.model", {"uri": "s3://models/base", "credentialsSecretRef": {"name": "models-keys"}})
    spec.set(
        "spec.data.datasets[1]",
        {"name": "s3", "uri": "s3://data/rows.jsonl", "credentialsSecretRef": {"name": "data-keys"}},
    )
    env = {
        e["name"]: e
        for e in builders.worker_job(job(spec), SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBETUNE_CREDENTIALS_0_AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "data-keys", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["KUBETUNE_CREDENTIALS_1_AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "models-keys"
    token = env["KUBETUNE_CREDENTIALS_1_AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["optional"] is True and not any("value" in e for n, e in env.items() if "CREDENTIALS" in n)


def test_a_hub_dataset_token_gets_its_own_variable_and_the_workers_go_online() -> None:
    source = {"repo": "org/rows", "split": "train", "tokenSecretRef": {"name": "data-token", "key": "token"}}
    spec = JobBuilder("demo").set("spec.data.datasets[0]", {"name": "rows", "huggingFace": source})
    env = {
        e["name"]: e
        for e in builders.worker_job(job(spec), SETTINGS)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["KUBETUNE_HUB_TOKEN_0"]["valueFrom"] == {"secretKeyRef": {"name": "data-token", "key": "token"}}
    assert env["HF_HUB_OFFLINE"]["value"] == "0" and "HF_TOKEN" not in env


def test_reconcile_errors_count_what_users_cause_apart_from_operator_faults() -> None:
    import kopf

    from kubetune.operator import metrics

    def count(outcome: str) -> float:
        value = metrics.registry.get_sample_value(
            "kubetune_reconcile_errors_total", {"handler": "suspend", "outcome": outcome}
        )
        return value or 0.0

    before = {outcome: count(outcome) for outcome in metrics.OUTCOMES}
    for error in (kopf.TemporaryError("a ConfigMap is missing", delay=1), kopf.PermanentError("bad"), KeyError("x")):
        with pytest.raises(type(error)), metrics.timed("suspend"):
            raise error
    assert {outcome: count(outcome) - before[outcome] for outcome in metrics.OUTCOMES} == {
        "error": 1,
        "temporary": 1,
        "permanent": 1,
    }
