"""spec.deploy: the inference server of a promotable job. Pure: the job in, the Deployment and Service manifests
out; the Deployment (as the index has it) in, ``status.deployment`` and the Deployed condition out.

- ``<job>-serve`` Deployment: ``kubetune serve`` from the trainer image (or vLLM's OpenAI server with
  ``engine: VLLM``, on the merged model), the output claim mounted read-only, no API token.
- ``<job>-serve`` Service: port 80 to the API port, so clients use ``http://<job>-serve.<namespace>.svc/v1``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubetune.api.enums import ConditionType, MethodType, ServingEngine
from kubetune.api.reasons import Reason, message
from kubetune.api.spec import FineTuneJob
from kubetune.api.status import DeploymentStatus, FineTuneJobStatus

from .builders import GPU, MODEL_CACHE, PVC_ROOT, SPEC_DIR, SPEC_KEY, security_contexts, threads, volumes_and_mounts
from .conditions import Conditions, Transition, is_true
from .naming import LABEL_COMPONENT, LABEL_JOB, child_name, labels
from .settings import Settings

COMPONENT = "serve"


def serve_name(job: FineTuneJob) -> str:
    return child_name(job.name, COMPONENT)


def promotable(current: FineTuneJobStatus | None) -> bool:
    return is_true(current, ConditionType.PROMOTABLE)


def _merged(job: FineTuneJob) -> bool:
    d = job.spec.deploy
    assert d is not None
    return d.merged or bool(job.spec.stages) or d.engine == ServingEngine.VLLM


def _container(job: FineTuneJob, settings: Settings, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    d, spec = job.spec.deploy, job.spec
    assert d is not None and spec.output is not None and spec.output.pvc is not None
    out = f"{PVC_ROOT}/{spec.output.pvc.claim_name}/{spec.output.pvc.path}".rstrip("/")
    quantities: dict[str, Any] = {"cpu": str(d.cpu), "memory": str(d.memory)}
    if d.gpus:
        quantities[GPU] = str(d.gpus)
    if d.engine == ServingEngine.VLLM:
        model = f"{out}/{'model' if spec.method.type == MethodType.FULL else 'merged'}"
        image, command = d.image or settings.vllm_image, ["vllm", "serve", model]
        args = [
            "--served-model-name",
            job.name,
            "--port",
            str(d.port),
            "--max-model-len",
            str(spec.training.max_seq_length),
        ]
    else:
        image, command = d.image or settings.trainer_image, ["python", "-m", "kubetune.trainer"]
        args = ["serve", f"{SPEC_DIR}/{SPEC_KEY}", f"--port={d.port}", f"--max-new-tokens={d.max_new_tokens}"]
        args += ["--merged"] if _merged(job) else []
    env = {
        "KUBETUNE_PVC_ROOT": PVC_ROOT,
        "KUBETUNE_MODEL_CACHE": MODEL_CACHE,
        "TMPDIR": "/scratch",
        "HOME": "/tmp",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1" if d.gpus else str(threads(d.cpu)),
    }
    probe = {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10}
    return {
        "name": COMPONENT,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "args": args,
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [{"name": "KUBETUNE_SERVE_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": d.port}],
        "resources": {"requests": quantities, "limits": quantities},
        "volumeMounts": mounts,
        # vLLM's image writes outside /tmp at start (not verified here): its root filesystem stays writable.
        "securityContext": security_contexts(read_only_root=d.engine != ServingEngine.VLLM)[1],
        "readinessProbe": {**probe, "initialDelaySeconds": 5},
        "startupProbe": {**probe, "failureThreshold": 60},
    }


def children(job: FineTuneJob, settings: Settings) -> list[dict[str, Any]]:
    """The server's Deployment and Service (creation order)."""
    d = job.spec.deploy
    assert d is not None
    volumes, mounts = volumes_and_mounts(job, settings, writable_output=False)
    selector = {LABEL_JOB: job.name, LABEL_COMPONENT: COMPONENT}
    pod = {
        "automountServiceAccountToken": False,
        "securityContext": security_contexts()[0],
        "containers": [_container(job, settings, mounts)],
        "volumes": volumes,
    }
    name, meta_labels = serve_name(job), labels(job.name, COMPONENT)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": job.namespace, "labels": meta_labels},
        "spec": {
            "replicas": d.replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": meta_labels}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": job.namespace, "labels": meta_labels},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }
    return [deployment, service]


def deployment_status(job: FineTuneJob, server: dict[str, Any] | None) -> DeploymentStatus:
    """What the status says of the server: names, URL, model name, ready replicas."""
    name = serve_name(job)
    ready = int(((server or {}).get("status") or {}).get("readyReplicas") or 0)
    url = f"http://{name}.{job.namespace}.svc/v1"
    return DeploymentStatus(name=name, url=url, model=job.name, ready_replicas=ready)


def with_server(
    job: FineTuneJob, server: dict[str, Any] | None, now: datetime
) -> tuple[FineTuneJobStatus, list[Transition]]:
    """A finished job's status with ``deployment`` and the Deployed condition: serving once a replica is ready,
    starting before, and not deployed when the job is not promotable."""
    new = (job.status or FineTuneJobStatus()).model_copy(deep=True)
    conditions = Conditions(new, job.metadata.get("generation"), now)
    if not promotable(job.status):
        new.deployment = None
        conditions.set(ConditionType.DEPLOYED, False, Reason.NOT_PROMOTABLE)
        return new, conditions.transitions
    new.deployment = deployment_status(job, server)
    ready, wanted = new.deployment.ready_replicas, job.spec.deploy.replicas if job.spec.deploy else 1
    if ready:
        text = message(Reason.SERVING, job.name, new.deployment.url, ready, wanted)
        conditions.set(ConditionType.DEPLOYED, True, Reason.SERVING, text)
    else:
        text = message(Reason.SERVER_STARTING, new.deployment.name, ready, wanted)
        conditions.set(ConditionType.DEPLOYED, False, Reason.SERVER_STARTING, text)
    return new, conditions.transitions
