"""The README's "Try it locally" block, run line by line as a user would (``make up`` ... ``make down``), then what it
promises around it: the state survives ``make down && make up``, and ``make up`` refuses when kubetune is already up
or a port is taken.

Two substitutions keep the test off a user's own local kubetune: the state directory (``~/.cache/kubetune/cluster``
-> a temporary one, through ``KUBETUNE_CLUSTER_DIR``) and the ports (``KUBETUNE_CLUSTER_PORT``; the README's
Prometheus port moves with them). Every other character of each command is the README's.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.controlplane]

README_STATE, README_PORT = "~/.cache/kubetune/cluster", 16443
PORT = 17443  # the test's own base port


def readme_block() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Try it locally", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "the README's 'Try it locally' section has no sh block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def substitute(line: str, state: Path) -> str:
    line = line.replace(README_STATE, str(state))
    return re.sub(r"127\.0\.0\.1:(1644\d)", lambda m: f"127.0.0.1:{int(m.group(1)) - README_PORT + PORT}", line)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {**os.environ, "KUBETUNE_CLUSTER_DIR": str(tmp_path / "cluster"), "KUBETUNE_CLUSTER_PORT": str(PORT)}
    env.pop("MAKEFLAGS", None)
    env.pop("MAKELEVEL", None)
    yield env
    subprocess.run(["make", "-s", "down"], cwd=ROOT, env=env, capture_output=True, timeout=120)


def sh(script: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_readme_block_then_a_restart_keeps_the_jobs(env: dict[str, str]) -> None:
    state = Path(env["KUBETUNE_CLUSTER_DIR"])
    lines = readme_block()
    assert lines[0] == "make up" and lines[-1] == "make down", lines
    result = sh("\n".join(substitute(line, state) for line in lines), env)
    printed = result.stdout + result.stderr
    log = (state / "serve.log").read_text(errors="replace")[-3000:] if (state / "serve.log").exists() else ""
    assert result.returncode == 0, printed[-6000:] + log
    assert "kubetune is up" in printed and "export KUBECONFIG=" in printed and "kubectl get ftj -w" in printed
    assert re.search(r"two-workers-lora\s+Succeeded\s+LoRA\s+100", printed), printed[-3000:]
    assert '"finetunejob":"two-workers-lora"' in printed  # Prometheus scraped the chart's operator
    assert (state / "volumes" / "outputs" / "two-workers-lora" / "manifest.json").is_file()
    assert "kubetune is down" in printed

    again = sh(f"make -s up >/dev/null\nsource {state}/env\nkubectl get ftj two-workers-lora\nmake -s up", env)
    assert re.search(r"two-workers-lora\s+Succeeded", again.stdout), again.stdout + again.stderr
    assert again.returncode != 0 and "kubetune is already up" in again.stderr, again.stderr[-2000:]


def test_up_refuses_a_taken_port(env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the last test's connections may linger
        taken.bind(("127.0.0.1", PORT + 5))
        taken.listen()
        result = sh("make -s up", env, timeout=600)
    assert result.returncode != 0
    assert f"port(s) {PORT + 5} on 127.0.0.1 are taken" in result.stderr, result.stderr[-2000:]
