"""The fuzzed specs the API server and pydantic both accept (``tests/reliability/fuzz.py``), created for real and
handed to the running operator (issue 20, item 1): it settles every one (Accepted True, or False with a reason)
without an exception other than the expected rejection, and creates no child for any job it does not accept.

Each is created suspended, so that an accepted one gets its children (the worker Job suspended) but starts no pod.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tests.api.cases import pydantic_verdict
from tests.operator.cluster import Cluster
from tests.reliability import fuzz
from tests.support.wait import wait_for

pytestmark = [pytest.mark.usefixtures("operator"), pytest.mark.reliability, pytest.mark.slow]
SEED, COUNT = 20, 1000
CHILD_KINDS = "jobs,services,configmaps,deployments"


def accepted_mutants() -> list[dict[str, Any]]:
    """The mutants pydantic accepts (the fuzz test shows the API server accepts the same), suspended. Long-name
    mutants share one name of up to 253 characters: each gets its index at the end instead of its last ones, so
    that every mutant is a job of its own."""
    docs, names = [], set()
    for mutant in fuzz.mutants(SEED, COUNT):
        if pydantic_verdict(mutant.doc)[0]:
            doc = json.loads(json.dumps(mutant.doc))
            name, tag = own_name(doc["metadata"]["name"]), f"-{mutant.index}"
            doc["metadata"]["name"] = name
            if name in names:
                doc["metadata"]["name"] = name[: len(name) - len(tag)] + tag
            names.add(doc["metadata"]["name"])
            doc["spec"]["suspend"] = True
            doc["metadata"]["labels"] = {"kubetune.dev/fuzzed": "true"}
            docs.append(doc)
    return docs


def own_name(name: str) -> str:
    """The mutant's name with ``opfuzz`` in front of its first characters (``fuzz-7`` -> ``opfuzz-7``, a long
    name keeps its length): the API-server fuzz test dry-runs the same mutants by their own names, which a job
    of this test still being deleted would hold."""
    return f"op{name}" if name.startswith("fuzz-") else "opfuzz" + name[6:]


def accepted_condition(job: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in job.get("status", {}).get("conditions", []) if c["type"] == "Accepted"), None)


def test_the_operator_settles_every_accepted_mutant_without_an_exception(k: Cluster) -> None:
    docs = accepted_mutants()
    names = {d["metadata"]["name"] for d in docs}
    mark = k.operator.log_mark()
    assert len(names) == len(docs)
    k.cp.kubectl("apply", "-f", "-", input="\n".join(json.dumps(d) for d in docs))
    try:

        def settled() -> dict[str, dict[str, Any]] | None:
            listed = json.loads(k.cp.kubectl("get", "ftj", "-l", "kubetune.dev/fuzzed", "-o", "json").stdout)
            jobs = {j["metadata"]["name"]: j for j in listed["items"]}
            done = {n: j for n, j in jobs.items() if accepted_condition(j) is not None}
            return done if set(done) == names else None

        jobs = wait_for(f"the operator to settle {len(names)} jobs", settled, 600)
        children = json.loads(k.cp.kubectl("get", CHILD_KINDS, "-l", "kubetune.dev/finetunejob", "-o", "json").stdout)
        owners = Counter(c["metadata"]["labels"]["kubetune.dev/finetunejob"] for c in children["items"])
        verdicts: Counter[str] = Counter()
        for name, job in jobs.items():
            condition = accepted_condition(job) or {}
            verdicts[f"{condition['status']} {condition['reason']}"] += 1
            if condition["status"] == "True":
                assert owners[name] == 3, (name, owners[name])  # spec ConfigMap, Service, worker Job
            else:
                assert owners[name] == 0, (name, condition)
                # OutputInUse: mutants of one base share its output location, and an older one (suspended) holds it.
                waiting = ("InvalidSpec", "MissingReference", "ClaimAccessMode", "OutputInUse")
                assert condition["reason"] in waiting and condition["message"], condition
        log = k.operator.log_since(mark)
        assert "failed with an exception" not in log, log[-3000:]
        print(f"{len(names)} accepted mutants: {dict(verdicts)}")
        assert verdicts["True SpecValid"] > 0
    finally:  # the operator's finalizers go first: wait, so that later tests find none of these
        k.cp.kubectl("delete", "ftj", "-l", "kubetune.dev/fuzzed", "--timeout=300s", check=False)
