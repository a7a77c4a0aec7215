"""Kubernetes client calls and their error mapping: "already exists" on create is success, "not found" on
read is None, anything else (429, 5xx) propagates to kopf's retry with backoff.

Objects go in and come out as plain dicts with the API's camelCase keys, like the manifests ``builders`` makes.
Rank 0's ``/progress`` is read over HTTP from the pod's IP: training pods need no API permissions at all.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from functools import cache
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from kubetune.api.spec import GROUP, PLURAL, VERSION
from kubetune.api.wire import TrainerProgress

from . import settings

USER_AGENT = "kubetune-operator"


@cache
def _client() -> kubernetes.client.ApiClient:
    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = kubernetes.client.Configuration.get_default_copy()
    # Kept-alive connections to the API server: one per handler thread (the client's default, 5 per CPU, is fewer
    # on a small node, and every call beyond it opened and dropped a TLS connection).
    configuration.connection_pool_maxsize = settings.current().max_workers
    client = kubernetes.client.ApiClient(configuration)
    client.user_agent = USER_AGENT  # names the operator in audit logs (kopf's own calls say kopf/<version>)
    return client


def _batch() -> kubernetes.client.BatchV1Api:
    return kubernetes.client.BatchV1Api(_client())


COLLECTIONS = {
    "ConfigMap": "/api/v1/namespaces/{namespace}/configmaps",
    "Service": "/api/v1/namespaces/{namespace}/services",
    "Job": "/apis/batch/v1/namespaces/{namespace}/jobs",
    "Deployment": "/apis/apps/v1/namespaces/{namespace}/deployments",
    "FineTuneJob": f"/apis/{GROUP}/{VERSION}/namespaces/{{namespace}}/{PLURAL}",
}
"""Where each kind of child is created (POST) and read (GET …/name)."""


def create(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create a child; (the object, created?). An existing child of the same name is returned as is."""
    collection = COLLECTIONS[body["kind"]].format(namespace=body["metadata"]["namespace"])
    try:
        return _request("POST", collection, body), True
    except ApiException as error:
        if error.status != 409:
            raise
    return _request("GET", f"{collection}/{body['metadata']['name']}"), False


def _request(method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One call with the client's connection pool and credentials, JSON in and out as plain dicts. The client's
    typed methods validate each body into its model classes and serialize them back (pydantic, per call): for a
    burst of new jobs that cost more CPU than the rest of the create handler. Errors raise ApiException as the
    typed methods do (409, 404 ... in ``status``)."""
    client = _client()
    headers = {"Accept": "application/json", "Content-Type": "application/json", "User-Agent": USER_AGENT}
    client.update_params_for_auth(headers, [], ["BearerToken"], path, method, body)
    response = client.call_api(method, f"{client.configuration.host}{path}", header_params=headers, body=body)
    data: bytes = response.read() or b""  # type: ignore[no-untyped-call]
    if not 200 <= response.status < 300:
        ApiException.from_response(http_resp=response, body=data.decode("utf-8", "replace"), data=None)
    document = json.loads(data)
    assert isinstance(document, dict)
    return document


def set_suspend(namespace: str, name: str, suspend: bool) -> None:
    _batch().patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})


def claim_modes(namespace: str) -> dict[str, set[str]]:
    """Each PersistentVolumeClaim of the namespace with its access modes (spec.accessModes)."""
    claims = _request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims")
    return {str(c["metadata"]["name"]): set(c["spec"].get("accessModes") or []) for c in claims.get("items") or []}


def config_map_keys(namespace: str, names: set[str]) -> dict[str, set[str]]:
    """Keys of each named ConfigMap that exists (data and binaryData)."""
    found: dict[str, set[str]] = {}
    for name in names:
        try:
            cm = _request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except ApiException as error:
            if error.status == 404:
                continue
            raise
        found[name] = set(cm.get("data") or {}) | set(cm.get("binaryData") or {})
    return found


MOUNT_EVENTS = ("FailedMount", "FailedAttachVolume")


def mount_failures(namespace: str, pods: list[str]) -> dict[str, str]:
    """The kubelet's (or attach controller's) latest FailedMount or FailedAttachVolume message for each named pod
    that has one: one list call per pod, made only for pods the kubelet has held in ContainerCreating a while."""
    found: dict[str, str] = {}
    for name in pods:
        selector = urllib.parse.quote(f"involvedObject.kind=Pod,involvedObject.name={name}")
        events = _request("GET", f"/api/v1/namespaces/{namespace}/events?fieldSelector={selector}").get("items") or []
        failures = [e for e in events if e.get("reason") in MOUNT_EVENTS]
        if failures:
            latest = max(failures, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
            found[name] = str(latest.get("message") or latest["reason"])
    return found


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(_client())


def stop_trial(namespace: str, name: str, annotation: str) -> None:
    """Suspend a sweep's trial (it keeps its checkpoint) and mark it stopped."""
    patch = {"metadata": {"annotations": {annotation: "median"}}, "spec": {"suspend": True}}
    _custom().patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)


def get_finetunejob(namespace: str, name: str) -> dict[str, Any] | None:
    """A FineTuneJob as JSON, or None when there is none of that name."""
    try:
        return _request("GET", f"{COLLECTIONS['FineTuneJob'].format(namespace=namespace)}/{name}")
    except ApiException as error:
        if error.status == 404:
            return None
        raise


def delete_finetunejob(namespace: str, name: str) -> None:
    """Delete a FineTuneJob (its children go with it through their owner references)."""
    try:
        _custom().delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background"
        )
    except ApiException as error:
        if error.status != 404:
            raise


def ensure_peering(name: str) -> None:
    """Create the ClusterKopfPeering the replicas share (kopf's mandatory peering waits for it otherwise)."""
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        kubernetes.client.CustomObjectsApi(_client()).create_cluster_custom_object(
            "kopf.dev", "v1", "clusterkopfpeerings", body
        )
    except ApiException as error:
        if error.status != 409:
            raise


def progress(pod_ip: str, port: int, timeout: float) -> TrainerProgress | None:
    """Rank 0's /progress document, or None when it cannot be read (not started, finished, network)."""
    try:
        with urllib.request.urlopen(f"http://{pod_ip}:{port}/progress", timeout=timeout) as response:
            return TrainerProgress.read(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
