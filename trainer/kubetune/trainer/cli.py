"""``kubetune run MANIFEST``: runs a FineTuneJob locally with a progress bar, outputs under ``runs/<name>/``.

Exit codes: 0 done, 78 bad spec or data (the message names the field or row), 3 training diverged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune.api import describe, parse_job

from .errors import EXIT_CONFIG, EXIT_DIVERGED, ConfigError
from .local import Volumes


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a FineTuneJob manifest locally")
    run.add_argument("manifest", type=Path)
    run.add_argument("--output", type=Path, help="output directory (default runs/<name>)")
    run.add_argument(
        "--volume",
        action="append",
        default=[],
        metavar="CLAIM=DIR",
        help="local directory standing for a PersistentVolumeClaim (default: the current directory)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        job = parse_job(yaml.safe_load(args.manifest.read_text()))
    except ValidationError as error:
        print(f"error: {args.manifest} is not a valid FineTuneJob:\n{describe(error)}", file=sys.stderr)
        return EXIT_CONFIG
    claims = dict(v.split("=", 1) for v in args.volume)
    volumes = Volumes(claims={k: Path(v) for k, v in claims.items()})
    out = args.output or Path("runs") / job.name
    from tqdm import tqdm

    from .loop import train

    bar = tqdm(desc=job.name, unit="step", dynamic_ncols=True)

    def progress(step: int, total: int, row: dict[str, Any]) -> None:
        bar.total = total
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['learningRate']:.2e}")
        bar.update(step - bar.n)

    try:
        metrics = train(job, volumes, out, progress)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except FloatingPointError as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    finally:
        bar.close()
    base, test = metrics["baseline"].get("loss"), metrics["test"].get("loss")
    print(f"done: {metrics['steps']} steps in {metrics['seconds']}s; outputs in {out}/")
    if base is not None and test is not None:
        print(f"test loss {test:.4f} (base model {base:.4f}); perplexity {metrics['test']['perplexity']:.2f}")
    return 0
