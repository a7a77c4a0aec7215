"""End to end: kubectl apply -> operator -> Indexed Job -> local node agent -> real trainer on a tiny model."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import _volume
from tests.operator.cluster import Cluster, e2e_job, resumed_from, running_with_checkpoint
from tests.operator.conftest import ROOT, wait_for
from tests.support import faults
from tests.support.operator import Operator

pytestmark = pytest.mark.usefixtures("operator")
COMPONENT = "app.kubernetes.io/component"


def test_two_workers_train_to_success(k: Cluster, volumes: dict[str, Path]) -> None:
    k.cp.kubectl("apply", "-f", str(ROOT / "examples" / "two-workers-cpu.yaml"))
    name = "two-workers-lora"
    k.wait_condition(name, "Succeeded")
    status = k.ftj(name)["status"]
    assert status["phase"] == "Succeeded"
    assert status["outputLocation"] == f"pvc://kubetune-outputs/{name}"
    assert status["evaluation"]["test"]["loss"] > 0 and "loss" in status["evaluation"]["baseline"]
    assert status["progress"]["percentage"] == 100 and status["workers"]["succeeded"] == 2
    annotations = k.ftj(name)["metadata"].get("annotations") or {}
    assert not [a for a in annotations if a.startswith("kubetune.dev/")], annotations  # kopf's bookkeeping: memory
    out = volumes["kubetune-outputs"] / name
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "manifest.json").read_text())["worldSize"] == 2  # torchrun ran 2 ranks
    printed = k.cp.kubectl("get", "ftj", name).stdout
    assert "Succeeded" in printed and "LoRA" in printed and "100" in printed
    events = k.cp.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}").stdout
    assert "Completed" in events and "Training" in events
    exported = wait_for("job metrics", lambda: _series(k.operator.metrics(), name), 30)
    assert 'kubetune_finetunejobs{phase="Succeeded"}' in k.operator.metrics()
    assert exported["kubetune_finetunejob_progress_ratio"] == 1.0
    assert exported['kubetune_finetunejob_eval_metric{metric="loss",model="tuned"}'] > 0


def _series(text: str, name: str) -> dict[str, float]:
    """The operator's series of one FineTuneJob, keyed by metric name and its other labels."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(\w+)\{(.*)\} (\S+)", line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        if labels.pop("finetunejob", None) != name or labels.pop("namespace", None) != "default":
            continue
        rest = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        found[match.group(1) + (f"{{{rest}}}" if rest else "")] = float(match.group(3))
    return found


def test_killed_worker_restarts_and_resumes_from_checkpoint(k: Cluster) -> None:
    k.apply(e2e_job("killed").set("spec.training.epochs", 8).build())
    wait_for("a checkpoint", lambda: running_with_checkpoint(k, "killed"), 300, lambda: k.diagnose("killed"))
    worker = next(p for p in k.pods("killed") if p["metadata"]["name"].startswith("killed-workers-1-"))
    k.node.kill("default", worker["metadata"]["name"])
    k.wait_condition("killed", "Succeeded", timeout=400)
    status = k.ftj("killed")["status"]
    assert status["checkpoint"]["location"].startswith("pvc://kubetune-outputs/killed/checkpoints/step-")
    assert status["restarts"] >= 1 and status["workers"]["failed"] >= 1
    assert resumed_from(k, "killed") > 0


@pytest.mark.reliability
def test_a_worker_over_its_memory_limit_is_out_of_memory_naming_the_limit(k: Cluster) -> None:
    """A trainer that allocates without end after step 2 is killed at spec.resources.memory (the node agent's
    OOM killer, as a cgroup's): Running=False OutOfMemory while it restarts, then Failed OutOfMemory."""
    k.node.faults["oom-workers-"] = faults.grow_after(2)
    try:
        k.apply(e2e_job("oom", workers=1).set("spec.maxRestarts", 1).build())
        restarting = wait_for("OutOfMemory while restarting", lambda: _oom_running(k), 300, lambda: k.diagnose("oom"))
        failed = k.wait_condition("oom", "Failed", timeout=300)
    finally:
        k.node.faults.pop("oom-workers-")
    assert restarting["message"].startswith("Worker 0 was killed for using more memory than its limit")
    assert failed["reason"] == "OutOfMemory" and "spec.resources.memory (2Gi) (OOMKilled)" in failed["message"]
    terminated = [p["status"]["containerStatuses"][0]["state"]["terminated"] for p in k.pods("oom")]
    assert [(t["reason"], t["exitCode"]) for t in terminated] == [("OOMKilled", 137)] * 2


def _oom_running(k: Cluster) -> dict[str, Any] | None:
    running = k.condition("oom", "Running")
    return running if running.get("reason") == "OutOfMemory" or k.condition("oom", "Failed") else None


def test_invalid_spec_is_not_accepted_and_creates_nothing(k: Cluster) -> None:
    doc = e2e_job("overlap", workers=1).set("spec.output", {"pvc": {"claimName": "kubetune-data", "path": ""}}).build()
    k.apply(doc)
    accepted = wait_for("Accepted=False", lambda: k.condition("overlap", "Accepted") or None, 60)
    assert accepted["status"] == "False" and accepted["reason"] == "InvalidSpec"
    assert "spec.output.pvc.path" in accepted["message"] and "datasets[0]" in accepted["message"]
    assert k.ftj("overlap")["status"]["phase"] == "Failed"
    assert k.get("job", "overlap-workers") is None and k.get("configmap", "overlap-spec") is None
    events = k.cp.kubectl("get", "events", "--field-selector", "involvedObject.name=overlap").stdout
    assert "InvalidSpec" in events


def test_suspend_resume_then_delete_cleans_up(k: Cluster) -> None:
    k.apply(e2e_job("pausing").set("spec.training.epochs", 20).build())  # long enough to be seen running
    wait_for("a checkpoint", lambda: running_with_checkpoint(k, "pausing"), 300, lambda: k.diagnose("pausing"))
    k.cp.kubectl("patch", "ftj", "pausing", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    k.wait_condition("pausing", "Suspended", timeout=120)
    wait_for("workers stopped", lambda: not [p for p in k.pods("pausing") if p["status"]["phase"] == "Running"], 180)
    kept = k.ftj("pausing")["status"]["progress"]["step"]
    assert kept > 0
    k.cp.kubectl("patch", "ftj", "pausing", "--type=merge", "-p", '{"spec":{"suspend":false}}')
    k.wait_condition("pausing", "Succeeded", timeout=400)
    assert k.condition("pausing", "Suspended")["status"] == "False"
    assert k.ftj("pausing")["status"]["restarts"] == 0  # a suspension is not a failure
    assert resumed_from(k, "pausing") > 0
    k.cp.kubectl("delete", "ftj", "pausing")
    for kind, name in (("job", "pausing-workers"), ("service", "pausing-workers"), ("configmap", "pausing-spec")):
        wait_for(f"{kind} {name} deleted", lambda kind=kind, name=name: k.get(kind, name) is None, 60)
    wait_for("pods deleted", lambda: not k.pods("pausing"), 60)
    wait_for("its metric series removed", lambda: not _series(k.operator.metrics(), "pausing"), 30)


def test_operator_restart_mid_run_creates_no_duplicates(k: Cluster) -> None:
    k.apply(e2e_job("restarted").set("spec.training.epochs", 4).build())
    wait_for(
        "running",
        lambda: k.ftj("restarted").get("status", {}).get("phase") == "Running",
        300,
        lambda: k.diagnose("restarted"),
    )
    # A second replica of lower priority stands by: it answers /metrics but reconciles nothing.
    standby = Operator(k.cp, k.operator.logdir, priority=10).start()
    try:
        wait_for("the standby's metrics endpoint", lambda: standby.metrics(), 60)
        active = k.operator.reconciles()
        wait_for("the active replica to reconcile", lambda: k.operator.reconciles() >= active + 3, 60)
        assert standby.reconciles() == 0, standby.log()
        k.operator.restart()
        k.wait_condition("restarted", "Succeeded", timeout=400)
    finally:
        standby.stop()
    for kind in ("jobs", "services", "configmaps"):
        out = k.cp.kubectl("get", kind, "-l", "kubetune.dev/finetunejob=restarted", "-o", "name").stdout.split()
        assert len(out) == 1, out
    assert len(k.pods("restarted")) == 2


def test_configuration_error_fails_at_once_and_ttl_deletes_the_job(k: Cluster) -> None:
    doc = e2e_job("bad-data", workers=1).set("spec.data.datasets[0].pvc.path", "examples/data/missing.jsonl")
    k.apply(doc.set("spec.ttlSecondsAfterFinished", 10).build())
    failed = k.wait_condition("bad-data", "Failed", timeout=180)
    assert failed["reason"] == "ConfigurationError"
    assert "spec.data.datasets[0].pvc.path" in failed["message"] and "missing.jsonl" in failed["message"]
    assert k.ftj("bad-data")["status"]["restarts"] == 0  # exit 78: the pod failure policy does not retry
    wait_for("the TTL to delete the job", lambda: k.get("finetunejob", "bad-data") is None, 90)
    wait_for("its worker Job to go", lambda: k.get("job", "bad-data-workers") is None, 60)


def test_a_second_job_at_one_location_waits_then_never_replaces_another_specs_model(
    k: Cluster, volumes: dict[str, Path]
) -> None:
    """A copied manifest (renamed, another learning rate, the same output path): it waits while the first runs
    (Accepted=False OutputInUse naming it), then fails at once (OutputExists) and leaves the first's model."""
    k.apply(e2e_job("writer-a", workers=1).set("spec.output.pvc.path", "shared").build())
    wait_for("writer-a's worker Job", lambda: k.get("job", "writer-a-workers"), 60, lambda: k.diagnose("writer-a"))
    copy = e2e_job("writer-b", workers=1).set("spec.output.pvc.path", "shared")
    k.apply(copy.set("spec.training.learningRate", 0.02).build())
    waiting = wait_for(
        "Accepted=False OutputInUse",
        lambda: c if (c := k.condition("writer-b", "Accepted")).get("reason") == "OutputInUse" else None,
        60,
        lambda: k.diagnose("writer-b"),
    )
    assert waiting["status"] == "False" and "default/writer-a" in waiting["message"]
    assert "pvc://kubetune-outputs/shared" in waiting["message"] and k.get("job", "writer-b-workers") is None
    k.wait_condition("writer-a", "Succeeded", timeout=300)
    failed = k.wait_condition("writer-b", "Failed", timeout=240)
    assert failed["reason"] == "OutputExists", failed
    assert "job writer-a" in failed["message"] and "spec.output.overwrite: true" in failed["message"]
    assert k.ftj("writer-b")["status"]["restarts"] == 0  # exit 78: not retried
    manifest = json.loads((volumes["kubetune-outputs"] / "shared" / "manifest.json").read_text())
    assert manifest["job"] == "writer-a" and manifest["spec"]["training"]["learningRate"] == 0.01


def test_several_workers_and_a_read_write_once_output_claim_are_not_accepted(k: Cluster, tmp_path: Path) -> None:
    _volume(k.cp, "rwo-outputs", tmp_path, ("ReadWriteOnce",))
    k.apply(e2e_job("rwo-job").set("spec.output.pvc.claimName", "rwo-outputs").build())
    refused = wait_for(
        "Accepted=False ClaimAccessMode",
        lambda: c if (c := k.condition("rwo-job", "Accepted")).get("reason") == "ClaimAccessMode" else None,
        60,
        lambda: k.diagnose("rwo-job"),
    )
    assert refused["status"] == "False" and k.get("job", "rwo-job-workers") is None
    assert (
        "spec.output.pvc.claimName: PersistentVolumeClaim 'rwo-outputs' has access modes ['ReadWriteOnce']"
        in (refused["message"])
    )
    assert "spec.output.uri" in refused["message"] and "spec.resources.workers: 1" in refused["message"]
    k.cp.kubectl("delete", "finetunejob", "rwo-job", "--wait=false")


def test_a_worker_whose_volume_cannot_be_mounted_is_named_then_trains_once_it_can(k: Cluster, tmp_path: Path) -> None:
    """Issue 39, item 3: the kubelet cannot mount the output claim's volume (its hostPath of type Directory is
    missing); the worker stays ContainerCreating, and the status says so with the kubelet's FailedMount words
    (Running=False, VolumeMountFailed). Once the directory exists the mount succeeds and the job trains."""
    missing = tmp_path / "not-yet"
    _volume(k.cp, "late-outputs", missing, host_type="Directory")
    k.apply(e2e_job("mount-job", workers=1).set("spec.output.pvc.claimName", "late-outputs").build())
    stuck = wait_for(
        "Running=False VolumeMountFailed",
        lambda: c if (c := k.condition("mount-job", "Running")).get("reason") == "VolumeMountFailed" else None,
        180,
        lambda: k.diagnose("mount-job"),
    )
    assert f"hostPath type check failed: {missing} is not a directory" in stuck["message"], stuck
    assert k.ftj("mount-job")["status"]["phase"] == "Pending"
    missing.mkdir()
    k.wait_condition("mount-job", "Succeeded", timeout=400)


def test_missing_config_map_waits_then_starts_when_it_appears(k: Cluster) -> None:
    doc = e2e_job("late-rows", workers=1).set(
        "spec.data.datasets[0]", {"name": "rows", "configMap": {"name": "late-rows-data", "key": "rows.jsonl"}}
    )
    k.apply(doc.build())
    waiting = wait_for("Accepted=False", lambda: k.condition("late-rows", "Accepted") or None, 60)
    assert waiting["status"] == "False" and waiting["reason"] == "MissingReference"
    assert "spec.data.datasets[0].configMap.name" in waiting["message"] and "late-rows-data" in waiting["message"]
    assert k.get("job", "late-rows-workers") is None
    rows = (ROOT / "examples" / "data" / "instructions.jsonl").read_text()
    k.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late-rows-data"}, "data": {"rows.jsonl": rows}}
    )
    k.wait_condition("late-rows", "Accepted", timeout=60)
    k.wait_condition("late-rows", "Succeeded", timeout=300)


def test_sequential_stages_with_a_forgetting_guard_report_every_stage(k: Cluster, volumes: dict[str, Path]) -> None:
    k.cp.kubectl("apply", "-f", str(ROOT / "examples" / "sequential-stages.yaml"))
    name = "sequential-stages"
    k.wait_condition(name, "Succeeded", timeout=600)
    status = k.ftj(name)["status"]
    assert [(s["name"], s["phase"]) for s in status["stages"]] == [("domain", "Succeeded"), ("instruct", "Succeeded")]
    assert all(s["steps"] > 0 and "loss" in s["test"] for s in status["stages"]) and not status.get("currentStage")
    retention = status["retention"]
    assert retention["regression"] == pytest.approx(
        (retention["after"] - retention["before"]) / retention["before"], abs=1e-4
    )
    assert k.condition(name, "Promotable")["reason"] in ("GatePassed", "GateFailed")
    assert k.condition(name, "Overfitting")["status"] in ("True", "False")
    evaluation = status["evaluation"]
    assert {"exactMatch", "rougeL"} <= set(evaluation["fewShot"]) and {"loss", "rougeL"} <= set(evaluation["baseline"])
    out = volumes["kubetune-outputs"] / name
    assert (out / "stages" / "domain" / "merged" / "config.json").is_file() and (out / "adapter").is_dir()
    exported = wait_for("job metrics", lambda: _series(k.operator.metrics(), name), 30)
    assert exported["kubetune_finetunejob_retention_regression_ratio"] == pytest.approx(retention["regression"])
    assert 'kubetune_finetunejob_eval_metric{metric="rougeL",model="fewshot"}' in exported


PROMPT = "### Instruction:\nSpell the word backwards.\n### Input:\nriver\n### Response:\n"


def _complete(url: str) -> dict[str, Any] | None:
    body = json.dumps({"model": "served", "prompt": PROMPT, "max_tokens": 8}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return dict(json.loads(response.read()))
    except OSError:
        return None  # not listening yet


def test_a_promotable_job_is_deployed_and_serves_the_tuned_model(k: Cluster, volumes: dict[str, Path]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    doc = e2e_job("served", workers=1).set("spec.training.maxSteps", 4)
    doc.set("spec.promotion", {"thresholds": [{"metric": "loss", "max": 100.0}]})
    k.apply(doc.set("spec.deploy", {"port": 18123, "maxNewTokens": 16}).build())
    k.wait_condition("served", "Succeeded")
    assert k.condition("served", "Promotable")["reason"] == "GatePassed"
    k.wait_condition("served", "Deployed", timeout=120)
    deployment = k.ftj("served")["status"]["deployment"]
    assert deployment["url"] == "http://served-serve.default.svc/v1" and deployment["model"] == "served"
    server = next(p for p in k.pods("served") if p["metadata"]["labels"].get(COMPONENT) == "serve")
    url = f"http://{server['status']['podIP']}:18123/v1/completions"
    answer = wait_for("the server to answer", lambda: _complete(url), 180, lambda: k.diagnose("served"))
    base = volumes["kubetune-models"] / "kubetune" / "tiny-llama"
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base), volumes["kubetune-outputs"] / "served" / "adapter"
    ).eval()
    ids = [tokenizer.bos_token_id] + tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        ends = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False, **ends)
    assert answer["choices"][0]["text"] == tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    with urllib.request.urlopen(url.replace("/v1/completions", "/metrics"), timeout=10) as response:
        assert 'kubetune_serve_requests_total{code="200",endpoint="completions"}' in response.read().decode()
    k.cp.kubectl("delete", "ftj", "served")  # the server goes with it (owner references)
    wait_for("the server deleted", lambda: k.get("deployment", "served-serve") is None, 60)


def test_a_sweep_runs_its_trials_and_ranks_them(k: Cluster, volumes: dict[str, Path]) -> None:
    k.cp.kubectl("apply", "-f", str(ROOT / "examples" / "sweeps" / "learning-rate.yaml"))

    def finished() -> dict[str, Any] | None:
        got = k.get("finetunesweep", "learning-rate") or {}
        return got if (got.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    def diagnose() -> str:
        sweep = json.dumps((k.get("finetunesweep", "learning-rate") or {}).get("status"), indent=1)
        return f"sweep: {sweep}\noperator:\n{k.operator.log()[-5000:]}"

    sweep = wait_for("the sweep to finish", finished, 600, diagnose)
    status = sweep["status"]
    assert status["phase"] == "Succeeded" and status["created"] == status["total"] == 4, diagnose()
    trials = status["trials"]
    assert {t["name"] for t in trials} == {f"learning-rate-00{i}" for i in range(4)}
    ranked = [t["metric"] for t in trials if t["phase"] == "Succeeded"]
    assert ranked == sorted(ranked) and status["bestMetric"] == ranked[0], "lower validation loss ranks first"
    assert status["bestTrial"] == trials[0]["name"] and set(status["bestParameters"]) == {
        "training.learningRate",
        "method.lora.rank",
    }
    best = k.ftj(status["bestTrial"])
    assert best["metadata"]["ownerReferences"][0]["kind"] == "FineTuneSweep"
    assert (volumes["kubetune-outputs"] / "sweeps" / status["bestTrial"] / "manifest.json").is_file()
    printed = k.cp.kubectl("get", "fts", "learning-rate").stdout
    assert "Succeeded" in printed and status["bestTrial"] in printed
    exported = k.operator.metrics()
    assert 'kubetune_finetunesweep_best_metric{finetunesweep="learning-rate",namespace="default"}' in exported


def test_continuous_tuning_waits_for_the_earlier_job_and_records_the_lineage(
    k: Cluster, volumes: dict[str, Path]
) -> None:
    first = e2e_job("tune-v1", workers=1).set("spec.training.maxSteps", 3).set("spec.output.mergeAdapter", True)
    second = e2e_job("tune-v2", workers=1).set("spec.training.maxSteps", 3).set("spec.model", {"fromJob": "tune-v1"})
    k.apply(second.set("spec.data.datasets[0].version", "v2").build())  # before the job it starts from
    waiting = wait_for("Accepted=False", lambda: k.condition("tune-v2", "Accepted") or None, 60)
    assert waiting["reason"] == "MissingReference" and "spec.model.fromJob" in waiting["message"]
    k.apply(first.set("spec.data.datasets[0].version", "v1").build())
    k.wait_condition("tune-v1", "Succeeded")
    k.wait_condition("tune-v2", "Succeeded", timeout=300)
    manifest = json.loads((volumes["kubetune-outputs"] / "tune-v2" / "manifest.json").read_text())
    assert [(a["job"], a["dataVersions"]) for a in manifest["lineage"]] == [("tune-v1", {"rows": "v1"})]
    assert "`tune-v1`" in (volumes["kubetune-outputs"] / "tune-v2" / "README.md").read_text()


def test_a_hub_model_waits_for_its_token_secret_then_trains_and_the_token_appears_nowhere(
    k: Cluster, volumes: dict[str, Path], tmp_path: Path
) -> None:
    """A private repo on a loopback Hub, its token in a Secret that does not exist yet: the workers wait
    (MissingReference, naming the Secret), the job trains once it appears, and the token's value is in no object,
    event, log, ConfigMap or output."""
    from kubetune.trainer.tiny import build_tiny_llama
    from tests.support.fakehub import FakeHub, serving

    secret, repo = "hf_e2e_token_5c0f3a9d", "kubetune/tiny-e2e"
    fake = FakeHub()
    fake.add(repo, build_tiny_llama(tmp_path / "repo", seed=6), token=secret)
    with serving(fake) as hub:
        doc = e2e_job("hub-model", workers=1).drop("spec.model.cached")
        doc.set("spec.model.huggingFace", {"repo": repo, "tokenSecretRef": {"name": "hub-token", "key": "token"}})
        doc.set("spec.resources.env", [{"name": "HF_ENDPOINT", "value": hub.url}]).set("spec.training.epochs", 1)
        k.apply(doc.build())
        waiting = wait_for(
            "Running=False MissingReference",
            lambda: c if (c := k.condition("hub-model", "Running")).get("reason") == "MissingReference" else None,
            120,
            lambda: k.diagnose("hub-model"),
        )
        assert 'secret "hub-token" not found' in waiting["message"]
        k.apply(
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hub-token"}, "stringData": {"token": secret}}
        )
        k.wait_condition("hub-model", "Succeeded", timeout=300)
    out = volumes["kubetune-outputs"] / "hub-model"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hub"]["commit"] == fake.repos[repo].commit and fake.downloads == 6
    worker = k.pods("hub-model")[0]["spec"]["containers"][0]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub-token", "key": "token"}}} in worker["env"]
    places = k.where_secrets_could_leak("hub-model")
    places["outputs"] = "".join(
        p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".json", ".md", ".html")
    )
    assert [where for where, text in places.items() if secret in text] == []


def test_s3_model_data_and_outputs_with_keys_from_a_secret_through_the_cluster(
    k: Cluster, volumes: dict[str, Path], tmp_path: Path
) -> None:
    """A real S3 server (moto, signed requests) holds the model and the data; the keys are in a Secret that lacks
    the secret key at first: the workers wait (MissingReference naming the key), then read both, train and write
    the outputs back to S3; the keys' values are in no object, event, log or ConfigMap."""
    from kubetune.trainer import remote
    from kubetune.trainer.tiny import build_tiny_llama
    from tests.support import s3server

    with s3server.serving(("models", "data", "runs"), tmp_path / "moto.log") as s3:
        remote.upload(build_tiny_llama(tmp_path / "tiny", seed=6), "s3://models/tiny", options=s3.options())
        (tmp_path / "rows").mkdir()
        (tmp_path / "rows" / "rows.jsonl").write_bytes((ROOT / "examples/data/instructions.jsonl").read_bytes())
        remote.upload(tmp_path / "rows", "s3://data/rows", options=s3.options())
        keys = {"endpoint": s3.url, "credentialsSecretRef": {"name": "s3-keys"}}
        doc = e2e_job("s3-job", workers=1).drop("spec.model.cached").set("spec.training.epochs", 1)
        doc.set("spec.model", {"uri": "s3://models/tiny", **keys})
        doc.set("spec.data.datasets[0]", {"name": "rows", "uri": "s3://data/rows/rows.jsonl", **keys})
        doc.set("spec.output", {"uri": "s3://runs/s3-job", **keys})
        k.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3-keys"},
                "stringData": {"AWS_ACCESS_KEY_ID": s3.key_id},
            }
        )
        k.apply(doc.build())
        waiting = wait_for(
            "Running=False MissingReference",
            lambda: c if (c := k.condition("s3-job", "Running")).get("reason") == "MissingReference" else None,
            120,
            lambda: k.diagnose("s3-job"),
        )
        assert "couldn't find key AWS_SECRET_ACCESS_KEY in Secret default/s3-keys" in waiting["message"]
        k.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3-keys"},
                "stringData": {"AWS_ACCESS_KEY_ID": s3.key_id, "AWS_SECRET_ACCESS_KEY": s3.secret},
            }
        )
        k.wait_condition("s3-job", "Succeeded", timeout=300)
        fs, _ = remote.filesystem("s3://runs/s3-job", "test", s3.options())
        manifest = json.loads(fs.cat_file("runs/s3-job/manifest.json"))
        assert manifest["spec"]["model"]["uri"] == "s3://models/tiny" and fs.exists("runs/s3-job/adapter")
    assert k.ftj("s3-job")["status"]["outputLocation"] == "s3://runs/s3-job"
    places = k.where_secrets_could_leak("s3-job")
    assert [where for where, text in places.items() if s3.secret in text] == []


@pytest.mark.timeout(1500)  # two two-worker runs and a restart: ~4 min quiet
def test_a_two_worker_job_killed_mid_run_resumes_from_s3_and_ends_as_an_uninterrupted_one(
    k: Cluster, tmp_path: Path
) -> None:
    """Issue 39, item 1: outputs on S3 (no claim at all): each checkpoint is uploaded; a worker pod SIGKILLed
    mid-run is replaced (empty scratch space), both ranks resume from the newest complete checkpoint on S3, and
    the test metrics match an uninterrupted run's within 1e-4."""
    from kubetune.trainer import remote
    from tests.support import s3server

    with s3server.serving(("runs",), tmp_path / "moto.log") as s3:
        k.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "s3-run-keys"},
                "stringData": {"AWS_ACCESS_KEY_ID": s3.key_id, "AWS_SECRET_ACCESS_KEY": s3.secret},
            }
        )
        keys = {"endpoint": s3.url, "credentialsSecretRef": {"name": "s3-run-keys"}}

        def job(name: str) -> dict[str, Any]:
            doc = e2e_job(name).set("spec.training.epochs", 6).set("spec.output", {"uri": f"s3://runs/{name}", **keys})
            return doc.build()

        k.apply(job("s3-whole"))
        k.wait_condition("s3-whole", "Succeeded", timeout=600)
        k.apply(job("s3-killed"))
        wait_for("a checkpoint", lambda: running_with_checkpoint(k, "s3-killed"), 300, lambda: k.diagnose("s3-killed"))
        fs, _ = remote.filesystem("s3://runs", "test", s3.options())
        wait_for("a checkpoint on S3", lambda: fs.exists("runs/s3-killed/checkpoints"), 120)
        worker = next(p for p in k.pods("s3-killed") if p["metadata"]["name"].startswith("s3-killed-workers-1-"))
        k.node.kill("default", worker["metadata"]["name"])
        k.wait_condition("s3-killed", "Succeeded", timeout=600)
    whole, killed = k.ftj("s3-whole")["status"], k.ftj("s3-killed")["status"]
    assert killed["restarts"] >= 1 and resumed_from(k, "s3-killed") > 0
    rank0 = next(
        p for p in k.pods("s3-killed") if p["status"]["phase"] == "Succeeded" and "-workers-0-" in p["metadata"]["name"]
    )
    assert "resuming from s3://runs/s3-killed/checkpoints/step-" in k.node.logs("default", rank0["metadata"]["name"])
    assert abs(whole["evaluation"]["test"]["loss"] - killed["evaluation"]["test"]["loss"]) < 1e-4, (whole, killed)
