"""``kubetune prepare MANIFEST``: a job's data preparation alone, without training.

It loads the model's tokenizer, reads, cleans, deduplicates, splits and tokenizes every dataset exactly as a
training run would, writes ``prep_report.json`` and prints what was kept and what was dropped, by reason, with the
first rows of each reason. Bad data exits 78 with the file and the first bad row named, as training would, in
seconds rather than after the model has loaded. A job with stages prepares each stage's data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from kubetune.api import FineTuneJob

from .local import Volumes
from .model import load_tokenizer
from .prepare import prepare_data
from .rows import PrepReport
from .stages import stage_spec
from .tiny import ensure_model


def prepare_only(job: FineTuneJob, volumes: Volumes, out: Path) -> dict[str, Any]:
    """Prepare the job's data (each stage's, for a job with stages); write and return the prep report(s)."""
    spec = job.spec
    tokenizer = load_tokenizer(ensure_model(volumes.model(spec.model), spec.model.cached), spec.model.trust_remote_code)
    specs = {stage.name: stage_spec(spec, stage) for stage in spec.stages} if spec.stages else {"": spec}
    reports: dict[str, Any] = {}
    for name, one in specs.items():
        report = PrepReport()
        prepare_data(one, volumes, tokenizer, report, _show_progress)
        reports[name] = report.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = reports.get("", {"stages": reports})
    (out / "prep_report.json").write_text(json.dumps(written, indent=2))
    for name, report in reports.items():
        for line in summary(report):
            print(f"{name}: {line}" if name else line)
    print(f"prep report: {out / 'prep_report.json'}")
    return written


def _show_progress(figures: dict[str, Any]) -> None:
    """A line on stderr every 10,000 rows read (or while waiting on another process preparing the same data)."""
    if "waitingSeconds" in figures:
        print(f"waiting {figures['waitingSeconds']} s for another process preparing the same data", file=sys.stderr)
        return
    megabytes = figures["bytesRead"] / 1e6
    print(f"read {figures['rowsRead']} rows ({megabytes:.1f} MB), {figures['rowsPerSecond']} rows/s", file=sys.stderr)


def summary(report: dict[str, Any]) -> list[str]:
    """A prep report in a few lines: rows read, split sizes, each drop reason with its first rows, warnings."""
    lines = [
        "rows read: " + ", ".join(f"{name} {count}" for name, count in report["rowsRead"].items()),
        "split sizes: " + ", ".join(f"{name} {count}" for name, count in report["splitSizes"].items()),
    ]
    for reason, count in sorted(report["dropped"].items()):
        first = ", ".join(report["firstDroppedRows"].get(reason, []))
        lines.append(f"dropped {count} {reason}: first rows {first}")
    if report["truncated"]:
        lines.append(f"truncated {report['truncated']} rows to spec.training.maxSeqLength")
    lines += [f"warning: {warning}" for warning in report["warnings"]]
    return lines
