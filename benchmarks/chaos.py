"""Reliability figures (issue 20): hostile data and fuzzed specs, printed as tables and a JSON line.

- Hostile data: seeded corruptions of the example datasets (``tests/reliability/hostile.py``) through
  ``kubetune prepare`` in this process: how many trained (with the dropped rows named), how many failed with exit
  78 naming the file and row, how many gave a traceback or an outcome other than the expected one.
- Fuzzed specs: seeded mutations of the examples (``tests/reliability/fuzz.py``) through pydantic: accepted and
  rejected, and how many rejections name a field. With ``--server`` (needs ``KUBETUNE_BIN_DIR``, as ``make test``
  sets it) each also goes to a real API server's dry run, and the figure is the disagreements.
- Repeated kills (not with ``--quick``): a two-rank job SIGKILLed at 5 seeded steps, relaunched after each
  (``tests/reliability/runs.py``): the steps each kill cost and the final metrics' distance from an uninterrupted
  run.

    python -m benchmarks.chaos [--quick] [--seed N] [--server]

Figures of record are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tests.reliability import fuzz, hostile


def hostile_data(seed: int, per_kind: int) -> dict[str, Any]:
    from kubetune.trainer.cli import main

    rows: dict[str, Counter[str]] = defaultdict(Counter)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubetune-chaos-") as tmp:
        folder = Path(tmp)
        os.environ.setdefault("KUBETUNE_MODEL_CACHE", str(folder / "models"))
        for item in hostile.corrupted(seed, per_kind):
            out, stderr = folder / f"{item.name}.out", io.StringIO()
            manifest = hostile.manifest(item, folder)
            try:
                with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                    code = main(["prepare", str(manifest), "--output", str(out), f"--volume=data={folder}"])
            except Exception as error:  # a traceback: counted, not raised
                code = 1
                stderr.write(f"Traceback (most recent call last): {error!r}")
            report_file = out / "prep_report.json"
            report = json.loads(report_file.read_text()) if report_file.exists() else None
            verdict = hostile.judge(item, code, stderr.getvalue(), report)
            counts = rows[item.kind]
            counts["files"] += 1
            counts["trained" if code == 0 else "exit 78" if code == 78 else f"exit {code}"] += 1
            counts["dropped rows named"] += sum((report or {}).get("dropped", {}).values())
            counts["traceback"] += verdict.traceback
            counts["unexpected"] += not verdict.ok
            (folder / item.name).unlink()
    seconds = time.perf_counter() - started
    print(f"\nHostile data: seed {seed}, {per_kind} files per kind, {seconds:.0f} s\n")
    columns = ["files", "trained", "exit 78", "dropped rows named", "traceback", "unexpected"]
    total = table("kind", rows, columns)
    return {"hostile_" + c.replace(" ", "_"): total[c] for c in columns} | {"hostile_seconds": round(seconds, 1)}


def fuzzed_specs(seed: int, count: int, server: bool) -> dict[str, Any]:
    from tests.api.cases import pydantic_verdict

    started = time.perf_counter()
    kinds: dict[str, Counter[str]] = defaultdict(Counter)
    dry_run, stop = None, None
    if server:
        from tests.support import controlplane

        plane = controlplane.start()
        plane.kubectl("apply", "--server-side", "-f", str(Path(__file__).parents[1] / "crds"))
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/finetunejobs.kubetune.dev")
        dry_run, stop = fuzz.DryRun(plane.server, plane.token), plane.stop
    try:
        for mutant in fuzz.mutants(seed, count):
            counts = kinds[mutant.kind]
            counts["mutants"] += 1
            if dry_run is not None:
                verdict = fuzz.verdicts(dry_run, mutant)
                counts["accepted" if verdict.model_ok else "rejected"] += 1
                counts["disagreements"] += not verdict.agree
                continue
            try:
                accepted, message = pydantic_verdict(mutant.doc)
            except Exception:  # anything but pydantic's ValidationError: counted, not raised
                counts["exceptions"] += 1
                continue
            counts["accepted" if accepted else "rejected"] += 1
            counts["rejections naming no field"] += not accepted and not fuzz.fields(message)
    finally:
        if stop is not None:
            stop()
    seconds = time.perf_counter() - started
    where = "pydantic and the API server's dry run" if server else "pydantic only (--server adds the API server)"
    print(f"\nFuzzed specs: seed {seed}, {count} mutants, {where}, {seconds:.0f} s\n")
    columns = ["mutants", "accepted", "rejected", "rejections naming no field", "exceptions"]
    if server:
        columns[3:] = ["disagreements"]
    total = table("mutation", kinds, columns)
    return {"specs_" + c.replace(" ", "_"): total[c] for c in columns} | {"specs_seconds": round(seconds, 1)}


def kills(seed: int) -> dict[str, Any]:
    from tests.reliability.runs import repeated_kills

    with tempfile.TemporaryDirectory(prefix="kubetune-chaos-") as tmp:
        result = repeated_kills(Path(tmp), seed)
    print(f"\nRepeated kills: seed {seed}, a two-rank job of 24 steps, checkpoints every 4, {result.seconds:.0f} s\n")
    print("| kill | at step | resumed from | steps recomputed |")
    print("|---:|---:|---:|---:|")
    rows = zip(result.kill_steps, result.resumed_from, result.recomputed, strict=True)
    for index, (step, start, lost) in enumerate(rows, start=1):
        print(f"| {index} | {step} | {start} | {lost} |")
    print(f"\nfinal train/test loss, uninterrupted vs killed 5 times: max |delta| {result.max_delta:.2e}")
    return {"kills_" + key: value for key, value in result.figures().items()}


def table(first: str, rows: dict[str, Counter[str]], columns: list[str]) -> Counter[str]:
    """Print ``rows`` as a Markdown table with a total row; return the totals."""
    print(f"| {first} | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    total: Counter[str] = Counter()
    for name, counts in rows.items():
        total.update(counts)
        print(f"| {name} | " + " | ".join(str(counts[c]) for c in columns) + " |")
    print("| **all** | " + " | ".join(f"**{total[c]}**" for c in columns) + " |")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 file per corruption kind, 100 specs")
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--server", action="store_true", help="also send every spec to a real API server")
    args = parser.parse_args()
    figures = {"seed": args.seed}
    figures |= hostile_data(args.seed, 1 if args.quick else 5)
    figures |= fuzzed_specs(args.seed, 100 if args.quick else 1000, args.server)
    if not args.quick:
        figures |= kills(args.seed)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
