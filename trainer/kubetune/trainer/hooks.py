"""Hooks run inside the loop, for tests and debugging plugins: callables run after every optimizer step.

``$KUBETUNE_TRAINER_HOOKS`` names ``module:function`` entries (comma-separated) that the recipe imports once per
process; each function receives the process's ``Hooks`` and appends to them. The trainer installs none of its own:
the resume tests install a SIGKILL at a chosen step this way (``tests/support/faults.py``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .checkpoint import TrainerState
from .errors import ConfigError

ENV = "KUBETUNE_TRAINER_HOOKS"


@dataclass
class Hooks:
    """What the loop calls: ``after_step`` after each optimizer step (and its checkpoint, when one is due)."""

    after_step: list[Callable[[TrainerState], None]] = field(default_factory=list)
    installed: set[str] = field(default_factory=set)

    def install(self, env: Mapping[str, str] = os.environ) -> Hooks:
        """Import and call each ``module:function`` of ``$KUBETUNE_TRAINER_HOOKS`` once."""
        for entry in filter(None, (e.strip() for e in env.get(ENV, "").split(","))):
            if entry in self.installed:
                continue
            module, _, name = entry.partition(":")
            try:
                install = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as error:
                raise ConfigError(f"${ENV}: cannot load {entry!r} ({error})") from error
            install(self)
            self.installed.add(entry)
        return self


HOOKS = Hooks()
"""This process's hooks."""
