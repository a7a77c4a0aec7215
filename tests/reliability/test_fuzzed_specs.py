"""1,000 seeded mutations of the examples through pydantic and the real API server: every one is accepted by both
or rejected by both with messages naming the same field (see ``fuzz``)."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.reliability import fuzz
from tests.support.controlplane import ControlPlane

pytestmark = [pytest.mark.controlplane, pytest.mark.reliability]
SEED, COUNT = 20, 1000


def test_pydantic_and_the_api_server_agree_on_every_fuzzed_spec(cluster: ControlPlane) -> None:
    dry_run = fuzz.DryRun(cluster.server, cluster.token)
    results = [fuzz.verdicts(dry_run, m) for m in fuzz.mutants(SEED, COUNT)]
    disagreements = [v for v in results if not v.agree]
    kinds = Counter(v.mutant.kind for v in results)
    assert set(kinds) == set(fuzz.KINDS) and sum(kinds.values()) == COUNT
    assert not disagreements, "\n".join(
        f"{v.mutant.index} {v.mutant.kind} {v.mutant.field}: pydantic {v.model_ok} {v.model_message[:200]!r}; "
        f"server {v.server_ok} {v.server_message[:200]!r}"
        for v in disagreements[:10]
    )
    rejected = sum(not v.model_ok for v in results)
    assert 0 < rejected < COUNT  # the mutations reach both outcomes
