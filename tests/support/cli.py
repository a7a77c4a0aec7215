"""The trainer's command line as the tests run it: ``python -m kubetune.trainer`` from the repository root, with
the project's packages (and the root, for ``tests`` and ``benchmarks``) on PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.paths import ROOT

PYTHONPATH = os.pathsep.join(str(ROOT / p) for p in ("api", "operator", "trainer", ""))
"""api/, operator/, trainer/ and the root: what a subprocess of the tests needs to import the project."""


def kubetune(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m kubetune.trainer *args`` in the root, output captured, not checked; ``env`` is added to this
    process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "kubetune.trainer", *args],
        env={**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
