"""Polling with a deadline and diagnostics, for end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(what: str, check: Callable[[], Any], timeout: float, on_timeout: Callable[[], str] = lambda: "") -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and diagnostics after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{on_timeout()}")
