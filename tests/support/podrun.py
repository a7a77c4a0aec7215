"""The node agent's container mode (``NodeAgent(runtime="podman")``): a pod's container as ``podman run`` of its image.

Pull-free: the pod's image name maps to a locally built image (``images``, e.g. the chart's
``ghcr.io/kubetune/trainer:0.1.0`` -> ``localhost/kubetune/trainer:<key>`` of hack/images.sh); ``--pull never``.
What the kubelet would pass to the runtime is passed: command (as the entrypoint) and args, env (by name, the values
through podman's own environment so that no Secret value lands on a command line), every volume mount at its real
path (``:ro`` for readOnly), the securityContext's user, group, read-only root filesystem, dropped capabilities and
no-new-privileges, and the memory and CPU limits (enforced by runc on this machine's cgroup v1 controllers). Pods use
the host network, as each pod already has its own loopback address (``nodeagent.pod_ip``).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from tests.support import containers

_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def name(pod: dict[str, Any]) -> str:
    """The container's name: unique per pod (its uid), readable (its namespace and name)."""
    meta = pod["metadata"]
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", f"kt_{meta['namespace']}_{meta['name']}_{meta['uid'][:8]}")


def memory_bytes(quantity: str) -> int:
    for suffix, factor in _UNITS.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(float(quantity))


def cpus(quantity: str) -> str:
    return str(int(quantity[:-1]) / 1000) if quantity.endswith("m") else quantity


def command(
    pod: dict[str, Any],
    argv: tuple[list[str], list[str]],
    env: dict[str, str],
    mounts: dict[str, tuple[Path, bool]],
    images: dict[str, str],
) -> tuple[list[str], dict[str, str]]:
    """``podman run`` of the pod's first container, and the environment to start it with.

    ``argv`` is the container's (command, args) with ``$(VAR)`` expanded; ``mounts`` maps each mount path in the
    container to (directory or file on this machine, read-only)."""
    spec = pod["spec"]
    container = spec["containers"][0]
    security = {**(spec.get("securityContext") or {}), **(container.get("securityContext") or {})}
    entrypoint, args = argv
    argv = ["podman", "run", "--rm", "--pull", "never", "--name", name(pod), "--network", "host"]
    argv += ["--hostname", spec.get("hostname", pod["metadata"]["name"])]
    if "runAsUser" in security:
        argv += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
    if security.get("readOnlyRootFilesystem"):
        argv.append("--read-only")
    if security.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    for capability in (security.get("capabilities") or {}).get("drop") or []:
        argv += ["--cap-drop", capability]
    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        argv += ["--memory", str(memory_bytes(str(limits["memory"])))]
    if "cpu" in limits:
        argv += ["--cpus", cpus(str(limits["cpu"]))]
    if container.get("workingDir"):
        argv += ["--workdir", container["workingDir"]]
    for target, (source, read_only) in sorted(mounts.items()):
        argv += ["--volume", f"{source.resolve()}:{target}" + (":ro" if read_only else "")]
    through_environment = {k: v for k, v in env.items() if not _read_by_podman(k)}
    for variable, value in env.items():  # a value through podman's environment stays off the command line
        argv += ["--env", variable if variable in through_environment else f"{variable}={value}"]
    if entrypoint:
        argv += ["--entrypoint", json.dumps(entrypoint)]
    argv += [images.get(container["image"], container["image"]), *args]
    return argv, {**containers.environment(), **through_environment}


def _read_by_podman(variable: str) -> bool:
    """Variables podman itself reads (a pod's TMPDIR=/scratch would move podman's own temporary files)."""
    return variable in ("TMPDIR", "HOME", "PATH", "LANG") or variable.startswith(("XDG_", "CONTAINERS_", "BUILDAH_"))


def kill(pod: dict[str, Any], signal: int) -> None:
    """Signal the container's processes (a signal to the ``podman run`` client would not reach them)."""
    subprocess.run(
        ["podman", "kill", "--signal", str(signal), name(pod)],
        capture_output=True,
        env=containers.environment(),
        timeout=60,
    )
