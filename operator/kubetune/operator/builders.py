"""Pure builders: a FineTuneJob in, its children's manifests out (dicts ready for the API server).

Children (deterministic names from ``naming``; the handler adds owner references with ``kopf.adopt``):

- ``<job>-spec``     ConfigMap: the resolved FineTuneJob (defaults filled in) as ``job.json``, mounted read-only.
- ``<job>-workers``  headless Service: gives worker 0 the stable name ``<job>-workers-0.<job>-workers`` for
                     torchrun's rendezvous.
- ``<job>-workers``  Indexed batch/v1 Job: completions = parallelism = workers; the completion index is the
                     torchrun node rank; pod failure policy: exit 78 (bad spec or data) and 3 (diverged) fail the
                     job at once, disruptions are not counted, anything else restarts from the last checkpoint up
                     to ``spec.maxRestarts`` times.

Training pods get no Kubernetes API token: the operator reads their progress from rank 0's ``/progress``. Every
child pod runs as the Pod Security Standards' ``restricted`` profile asks (``security_contexts``): non-root (uid
65532, the images' user), no privilege escalation, every capability dropped, the RuntimeDefault seccomp profile,
and a read-only root filesystem: what the trainer writes goes to emptyDirs (``/tmp``, ``/scratch``) and claims.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from kubetune.api import credentials
from kubetune.api.exitcodes import NON_RETRYABLE
from kubetune.api.spec import API_VERSION, KIND, FineTuneJob

from .children import COMPLETION_INDEX, CONTAINER
from .naming import LABEL_COMPONENT, LABEL_JOB, child_name, labels
from .settings import Settings

SPEC_KEY = "job.json"
SPEC_DIR = "/etc/kubetune"
PVC_ROOT = "/mnt/pvc"
CONFIGMAP_ROOT = "/mnt/configmaps"
MODEL_CACHE = "/mnt/models"
TERMINATION_LOG = "/dev/termination-log"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
GPU = "nvidia.com/gpu"
NON_ROOT_ID = 65532
"""The user and group child pods run as: the trainer and operator images' own (``USER 65532:65532``)."""
_SUFFIXES = {
    "m": Decimal("0.001"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def threads(cpu: int | str) -> int:
    """OMP_NUM_THREADS for a CPU quantity: whole cores, rounded down, at least 1 ("500m" and "1.5" give 1)."""
    found = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", str(cpu))
    if found is None or found.group(2) not in _SUFFIXES:
        return 1
    return max(1, int(Decimal(found.group(1)) * _SUFFIXES[found.group(2)]))


def spec_name(job: FineTuneJob) -> str:
    return child_name(job.name, "spec")


def workers_name(job: FineTuneJob) -> str:
    """Name of both the headless Service and the Indexed Job (pods are ``<this>-<index>-<random>``)."""
    return child_name(job.name, "workers")


def master_address(job: FineTuneJob) -> str:
    """Worker 0's DNS name: Indexed Job pods get hostname ``<job>-<index>`` under the Service's subdomain."""
    return f"{workers_name(job)}-0.{workers_name(job)}"


def resolved(job: FineTuneJob) -> dict[str, Any]:
    """The FineTuneJob as the trainer reads it: name and namespace, and the spec with every default filled in."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": job.name, "namespace": job.namespace},
        "spec": job.spec.to_wire(),
    }


def spec_config_map(job: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": spec_name(job), "namespace": job.namespace, "labels": labels(job.name, "spec")},
        "data": {SPEC_KEY: json.dumps(resolved(job), indent=2, sort_keys=True)},
    }


def service(job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": workers_name(job), "namespace": job.namespace, "labels": labels(job.name, "workers")},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # rendezvous happens before any readiness
            "selector": {LABEL_JOB: job.name, LABEL_COMPONENT: "worker"},
            "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port}],
        },
    }


def security_contexts(read_only_root: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(pod securityContext, container securityContext) of the restricted profile. ``fsGroup`` makes claims
    writable by the non-root user; ``read_only_root=False`` for images that write outside /tmp (vLLM's)."""
    pod = {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_ID,
        "runAsGroup": NON_ROOT_ID,
        "fsGroup": NON_ROOT_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }
    return pod, container


def volumes_and_mounts(
    job: FineTuneJob, settings: Settings, writable_output: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): the spec, each claim once, the model cache, ConfigMap datasets, /dev/shm. A
    server (``writable_output=False``) gets the model and output claims only, all read-only."""
    spec = job.spec
    volumes: list[dict[str, Any]] = [{"name": "spec", "configMap": {"name": spec_name(job)}}]
    mounts: list[dict[str, Any]] = [{"name": "spec", "mountPath": SPEC_DIR, "readOnly": True}]
    output = {spec.output.pvc.claim_name} if spec.output is not None and spec.output.pvc is not None else set()
    if spec.data.cache is not None and writable_output:  # the prepared-data cache is written by the workers
        output.add(spec.data.cache.claim_name)
    writable = output if writable_output else set()
    claims = [spec.model.pvc.claim_name] if spec.model.pvc is not None else []
    claims += [d.pvc.claim_name for d in spec.data.datasets if d.pvc is not None and writable_output]
    claims += sorted(output)
    for i, claim in enumerate(dict.fromkeys(claims)):
        read_only = claim not in writable
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": read_only})
    if spec.model.cached is not None:
        cache = {"claimName": settings.model_cache_claim, "readOnly": True}
        volumes.append({"name": "model-cache", "persistentVolumeClaim": cache})
        mounts.append({"name": "model-cache", "mountPath": MODEL_CACHE, "readOnly": True})
    names = dict.fromkeys(d.config_map.name for d in spec.data.datasets if d.config_map is not None and writable_output)
    for i, name in enumerate(names):
        volumes.append({"name": f"configmap-{i}", "configMap": {"name": name}})
        mounts.append({"name": f"configmap-{i}", "mountPath": f"{CONFIGMAP_ROOT}/{name}", "readOnly": True})
    volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})  # NCCL and DataLoader workers need shm
    mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    volumes.append({"name": "scratch", "emptyDir": {}})
    mounts.append({"name": "scratch", "mountPath": "/scratch"})
    volumes.append({"name": "tmp", "emptyDir": {}})  # HOME (caches of torch, triton, HF) on a read-only root
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    return volumes, mounts


def _env(job: FineTuneJob, settings: Settings) -> list[dict[str, Any]]:
    r, hub = job.spec.resources, job.spec.model.hugging_face
    plain = {
        "NNODES": str(r.workers),
        "NPROC_PER_NODE": str(max(r.gpus_per_worker, 1)),
        "MASTER_ADDR": master_address(job),
        "MASTER_PORT": str(settings.master_port),
        "KUBETUNE_METRICS_PORT": str(settings.trainer_metrics_port),
        "KUBETUNE_TERMINATION_LOG": TERMINATION_LOG,
        "KUBETUNE_PVC_ROOT": PVC_ROOT,
        "KUBETUNE_CONFIGMAP_ROOT": CONFIGMAP_ROOT,
        "KUBETUNE_MODEL_CACHE": MODEL_CACHE,
        "TMPDIR": "/scratch",
        "HOME": "/tmp",  # an image of the user's may have a HOME the non-root user cannot write
        "HF_HUB_OFFLINE": "0" if credentials.uses_hub(job.spec) else "1",  # only Hub jobs may reach the network
        "OMP_NUM_THREADS": "1" if r.gpus_per_worker else str(threads(r.cpu)),
    }
    # The user's variables first: the operator's, later, win (the API rejects their names anyway).
    env: list[dict[str, Any]] = [e.to_wire() for e in r.env or []]
    env += [{"name": k, "value": v} for k, v in plain.items()]
    for name, slot in credentials.slots(job.spec).items():  # each uri location's keys, by reference
        for key in (*credentials.REQUIRED_KEYS, *credentials.OPTIONAL_KEYS):
            wire: dict[str, Any] = {"name": name, "key": key}
            if key in credentials.OPTIONAL_KEYS:
                wire["optional"] = True
            env.append({"name": credentials.variable(slot, key), "valueFrom": {"secretKeyRef": wire}})
    for (name, key), variable in credentials.hub_tokens(job.spec).items():
        env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}})
    if hub is not None and hub.token_secret_ref is not None:
        ref = hub.token_secret_ref  # resolved by the kubelet: the operator never reads the Secret
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    # Node rank: the Job controller also injects JOB_COMPLETION_INDEX; NODE_RANK makes the contract explicit.
    index = f"metadata.annotations['{COMPLETION_INDEX}']"
    env.append({"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": index}}})
    env.append({"name": "KUBETUNE_METRICS_ADDRESS", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
    return env


def worker_job(job: FineTuneJob, settings: Settings) -> dict[str, Any]:
    spec, r = job.spec, job.spec.resources
    volumes, mounts = volumes_and_mounts(job, settings)
    pod_security, container_security = security_contexts()
    quantities: dict[str, Any] = {"cpu": str(r.cpu), "memory": str(r.memory)}
    if r.gpus_per_worker:
        quantities[GPU] = str(r.gpus_per_worker)
    container = {
        "name": CONTAINER,
        "image": r.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["python", "-m", "kubetune.trainer"],
        "args": ["launch", f"{SPEC_DIR}/{SPEC_KEY}"],
        "env": _env(job, settings),
        **({"envFrom": [e.to_wire() for e in r.env_from]} if r.env_from else {}),
        "ports": [
            {"name": "rendezvous", "containerPort": settings.master_port},
            {"name": "metrics", "containerPort": settings.trainer_metrics_port},
        ],
        "resources": {"requests": quantities, "limits": quantities},
        "volumeMounts": mounts,
        "securityContext": container_security,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",  # a crash without a summary shows its last log lines
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job restarts failed workers (podFailurePolicy requires Never)
        "subdomain": workers_name(job),
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 120,  # SIGTERM: the step finishes and a checkpoint is written
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    optional = {
        "serviceAccountName": r.service_account_name,
        "nodeSelector": r.node_selector,
        "priorityClassName": r.priority_class_name,
        "tolerations": [t.to_wire() for t in r.tolerations] if r.tolerations else None,
    }
    pod_spec.update({k: v for k, v in optional.items() if v})
    job_labels = labels(job.name, "workers")
    if r.queue:
        job_labels[QUEUE_LABEL] = r.queue
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": r.workers,
        "parallelism": r.workers,
        "backoffLimit": spec.max_restarts * r.workers,  # one failure usually takes every worker's pod down
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": sorted(NON_RETRYABLE)},
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "suspend": spec.suspend,
        "template": {"metadata": {"labels": labels(job.name, "worker")}, "spec": pod_spec},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": workers_name(job), "namespace": job.namespace, "labels": job_labels},
        "spec": job_spec,
    }


def children(job: FineTuneJob, settings: Settings) -> list[dict[str, Any]]:
    """Every child, in creation order (the Job last: its pods mount the ConfigMap and need the Service)."""
    return [spec_config_map(job), service(job, settings), worker_job(job, settings)]
