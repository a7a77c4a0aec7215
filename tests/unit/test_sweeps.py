"""FineTuneSweep policy, pure: the search space, trial manifests, and reconcile steps (parallelism, budget, median
stopping, leaderboard, completion)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from kubetune.api.sweep import FineTuneSweep, parse_sweep
from kubetune.operator import sweeps
from tests.support.builders import JobBuilder, trial

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def sweep(**spec: Any) -> FineTuneSweep:
    template = JobBuilder("t").set("spec.output", {"pvc": {"claimName": "out", "path": "sweeps"}}).build()["spec"]
    body = {
        "template": template,
        "parameters": [
            {"path": "training.learningRate", "values": [0.01, 0.001]},
            {"path": "method.lora.rank", "values": [4, 8]},
        ],
        **spec,
    }
    return parse_sweep(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneSweep",
            "metadata": {"name": "lr", "namespace": "team", "generation": 1},
            "spec": body,
        }
    )


def test_grid_is_every_combination_in_order_within_the_budget() -> None:
    lr, rank = "training.learningRate", "method.lora.rank"
    assert sweeps.space(sweep()) == [
        {lr: 0.01, rank: 4},
        {lr: 0.01, rank: 8},
        {lr: 0.001, rank: 4},
        {lr: 0.001, rank: 8},
    ]
    assert len(sweeps.space(sweep(maxTrials=3))) == 3


def test_random_draws_are_seeded_and_respect_ranges() -> None:
    params = [
        {"path": "training.learningRate", "min": 1e-5, "max": 1e-2, "log": True},
        {"path": "method.lora.rank", "min": 2, "max": 64, "integer": True},
    ]
    s = sweep(algorithm="Random", seed=3, maxTrials=20, parameters=params)
    drawn = sweeps.space(s)
    assert drawn == sweeps.space(sweep(algorithm="Random", seed=3, maxTrials=20, parameters=params))
    assert all(1e-5 <= d["training.learningRate"] <= 1e-2 for d in drawn)
    assert all(float(d["method.lora.rank"]).is_integer() and 2 <= d["method.lora.rank"] <= 64 for d in drawn)
    assert drawn != sweeps.space(sweep(algorithm="Random", seed=4, maxTrials=20, parameters=params))


def test_trial_jobs_set_the_fields_and_write_to_their_own_directory() -> None:
    s = sweep()
    job = sweeps.trial_job(s, 1, sweeps.space(s)[1])
    assert job["metadata"]["name"] == "lr-001" and job["metadata"]["labels"]["kubetune.dev/finetunesweep"] == "lr"
    assert job["spec"]["training"]["learningRate"] == 0.01 and job["spec"]["method"]["lora"]["rank"] == 8
    assert isinstance(job["spec"]["method"]["lora"]["rank"], int)
    assert job["spec"]["output"]["pvc"]["path"] == "sweeps/lr-001"


def test_a_value_the_spec_rejects_names_the_trial_and_field() -> None:
    bad = sweep(parameters=[{"path": "training.learningRate", "values": [0.01, 5.0]}])
    (problem,) = sweeps.check(bad)
    assert problem.startswith("trial 1 (training.learningRate=5)") and "spec.template.training.learningRate" in problem
    with pytest.raises(ValueError, match="trainin"):
        sweeps.trial_job(sweep(parameters=[{"path": "trainin.lr", "values": [1]}]), 0, {"trainin.lr": 1})


def test_reconcile_keeps_max_parallel_running_and_finishes_with_the_best() -> None:
    s = sweep(maxParallel=2)
    first = sweeps.reconcile(s, [], NOW)
    assert [m["metadata"]["name"] for m in first.create] == ["lr-000", "lr-001"]
    assert first.status.phase == "Running" and (first.status.created, first.status.total) == (2, 4)
    running = [trial(s, 0, "Succeeded", 1.2), trial(s, 1, "Running", 1.5, 30)]
    second = sweeps.reconcile(s, running, NOW)
    assert [m["metadata"]["name"] for m in second.create] == ["lr-002"]
    done = [
        trial(s, 0, "Succeeded", 1.2),
        trial(s, 1, "Succeeded", 0.9),
        trial(s, 2, "Failed"),
        trial(s, 3, "Succeeded", 1.0),
    ]
    final = sweeps.reconcile(s, done, NOW)
    assert final.create == [] and final.status.phase == "Succeeded"
    assert [t.name for t in final.status.trials] == ["lr-001", "lr-003", "lr-000", "lr-002"], "best first"
    assert final.status.best_trial == "lr-001" and final.status.best_metric == 0.9
    assert final.status.best_parameters == {"training.learningRate": 0.01, "method.lora.rank": 8}
    assert any(t.reason == "SweepCompleted" for t in final.transitions)


def test_median_stopping_suspends_a_losing_trial_past_its_share_of_steps() -> None:
    s = sweep(maxParallel=4, earlyStopping={"afterPercent": 50, "minTrials": 2})
    trials = [
        trial(s, 0, "Succeeded", 1.0),
        trial(s, 1, "Succeeded", 1.2),
        trial(s, 2, "Running", 2.0, 60),
        trial(s, 3, "Running", 2.0, 20),
    ]
    step = sweeps.reconcile(s, trials, NOW)
    assert step.stop == ["lr-002"], "past 50 % and worse than the median 1.1; lr-003 is not far enough yet"
    assert {t.name: t.phase for t in step.status.trials}["lr-002"] == "Stopped"
    stopped = copy.deepcopy(trials)
    stopped[2]["metadata"]["annotations"][sweeps.STOPPED] = "median"
    assert sweeps.reconcile(s, stopped, NOW).stop == []


def test_test_metric_objectives_rank_by_their_goal() -> None:
    s = sweep(objective={"metric": "test.f1"})
    done = [trial(s, i, "Succeeded", 1.0, 100, {"f1": f}) for i, f in enumerate((0.5, 0.8, 0.7, 0.6))]
    assert sweeps.reconcile(s, done, NOW).status.best_trial == "lr-001"
    losses = sweep(objective={"metric": "test.loss"})
    done = [trial(losses, i, "Succeeded", 1.0, 100, {"loss": v}) for i, v in enumerate((2.0, 1.0, 3.0, 4.0))]
    assert sweeps.reconcile(losses, done, NOW).status.best_trial == "lr-001"
    assert sweeps.reconcile(s, [trial(s, i, "Failed") for i in range(4)], NOW).status.phase == "Failed"


def test_succeeded_trials_without_the_objective_say_so() -> None:
    s = sweep()
    final = sweeps.reconcile(s, [trial(s, i, "Succeeded") for i in range(4)], NOW)
    assert final.status.phase == "Failed"
    failed = next(c for c in final.status.conditions if c.type == "Failed")
    assert failed.reason == "NoObjective" and "bestValidationMetric" in failed.message
    doc = sweeps.wire(final.status)
    assert doc["trials"][0]["parameters"]["method.lora.rank"] == 4 and "metric" not in doc["trials"][0]
