"""The picture of a run: PNG plots beside ``metrics.json`` and a self-contained ``report.html`` (the plots
inlined as data URIs, so it opens offline and travels as one file).

Plots (matplotlib, Agg backend): ``loss.png`` (train and validation loss against steps), ``learning_rate.png``,
``test_metrics.png`` (base model zero-shot, few-shot and tuned test metrics with their 95% bootstrap intervals),
``prep.png`` (rows kept and dropped by reason, token-length histogram per split).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubetune.api.wire import HEADLINE

SCORES = ("exactMatch", "rougeL", "accuracy", "f1", "passkeyAccuracy")
"""Test metrics on a 0-1 scale, drawn side by side (loss and perplexity are in the table)."""


def write(
    out: Path, name: str, metrics: dict[str, Any], report: dict[str, Any], lengths: dict[str, Sequence[int]]
) -> list[str]:
    """Write the plots and report.html under ``out``; return the plot file names written."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for file, draw in DRAWERS.items():
        figure = draw(metrics, report, lengths)
        if figure is not None:
            figure.savefig(out / file, dpi=100, bbox_inches="tight")
            _close(figure)
            written.append(file)
    (out / "report.html").write_text(page(out, name, metrics, report, written))
    return written


def _close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


def _figure(width: float = 6.4, height: float = 3.6, columns: int = 1) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(width, height))


def _loss(metrics: dict[str, Any], report: dict[str, Any], lengths: dict[str, Sequence[int]]) -> Any:
    train, validation = metrics["history"]["train"], metrics["history"]["validation"]
    if not train:
        return None
    figure, ax = _figure()
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", linewidth=1)
    if validation:
        ax.plot([r["step"] for r in validation], [r["loss"] for r in validation], "o-", label="validation")
    best = (metrics.get("bestValidation") or {}).get("step")
    if best:
        ax.axvline(best, color="grey", linestyle=":", label=f"best step {best}")
    ax.set(xlabel="optimizer step", ylabel="loss", title="Loss")
    ax.legend()
    return figure


def _learning_rate(metrics: dict[str, Any], report: dict[str, Any], lengths: dict[str, Sequence[int]]) -> Any:
    train = metrics["history"]["train"]
    if not train:
        return None
    figure, ax = _figure(height=2.8)
    ax.plot([r["step"] for r in train], [r["learningRate"] for r in train])
    ax.set(xlabel="optimizer step", ylabel="learning rate", title="Learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    return figure


def columns(metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, test metrics) of what is compared: the base model zero-shot, few-shot, and the tuned model."""
    few = metrics.get("fewShot") or {}
    found = [("base model", metrics.get("baseline") or {})]
    if few:
        found.append((f"base model {few.get('k')}-shot", few))
    return [*found, ("tuned", metrics.get("test") or {})]


def _test_metrics(metrics: dict[str, Any], report: dict[str, Any], lengths: dict[str, Sequence[int]]) -> Any:
    import numpy as np

    compared = columns(metrics)
    keys = [k for k in SCORES if k in compared[-1][1]]
    if not keys:
        return None
    figure, ax = _figure()
    width = 0.8 / len(compared)
    for i, (label, values) in enumerate(compared):
        x = np.arange(len(keys)) + (i - (len(compared) - 1) / 2) * width
        heights = [float(values.get(k, 0.0)) for k in keys]
        intervals = values.get("intervals") or {}
        low = [h - intervals[k][0] if k in intervals else 0.0 for h, k in zip(heights, keys, strict=True)]
        high = [intervals[k][1] - h if k in intervals else 0.0 for h, k in zip(heights, keys, strict=True)]
        bars = ax.bar(x, heights, width, yerr=[low, high], capsize=3, label=label)
        ax.bar_label(bars, fmt="%.2f", padding=2, fontsize="small")
    ax.set_xticks(np.arange(len(keys)), keys)
    ax.set(ylim=(0, 1.12), ylabel="test score", title="Test metrics (95% bootstrap intervals)")
    ax.legend(loc="upper left", fontsize="small")
    return figure


def _prep(metrics: dict[str, Any], report: dict[str, Any], lengths: dict[str, Sequence[int]]) -> Any:
    figure, (rows, hist) = _figure(width=10, columns=2)
    kept = {f"kept: {k}": v for k, v in (report.get("splitSizes") or {}).items()}
    dropped = {f"dropped: {k}": v for k, v in (report.get("dropped") or {}).items()}
    bars = {**kept, **dropped}
    rows.barh(list(bars), list(bars.values()), color=["tab:blue"] * len(kept) + ["tab:red"] * len(dropped))
    rows.invert_yaxis()
    rows.set(xlabel="rows", title="Rows kept and dropped")
    for split, values in lengths.items():
        if len(values):
            hist.hist(values, bins=30, alpha=0.6, label=split)
    hist.set(xlabel="tokens per row", ylabel="rows", title="Token lengths")
    if lengths:
        hist.legend()
    figure.tight_layout()
    return figure


DRAWERS = {"loss.png": _loss, "learning_rate.png": _learning_rate, "test_metrics.png": _test_metrics, "prep.png": _prep}
PLOTS = tuple(DRAWERS)
"""The plot files a run writes, in report order."""


def page(out: Path, name: str, metrics: dict[str, Any], report: dict[str, Any], plots: list[str]) -> str:
    """report.html: the comparison table, the plots (inlined) and the prep report."""
    compared = columns(metrics)
    head = "".join(f"<th>{html.escape(label)}</th>" for label, _ in compared)
    body = []
    for key in HEADLINE:
        if key in compared[-1][1]:
            cells = "".join(f"<td>{_cell(values, key)}</td>" for _, values in compared)
            body.append(f"<tr><th>{key}</th>{cells}</tr>")
    best = metrics.get("bestValidation") or {}
    facts = [
        f"{metrics.get('steps')} optimizer steps in {metrics.get('seconds')} s",
        f"{metrics.get('tokens')} tokens",
        f"world size {metrics.get('worldSize')}",
    ]
    if best.get("step"):
        facts.append(f"best validation at step {best['step']}")
    images = "".join(
        f'<figure><img alt="{p}" src="data:image/png;base64,{base64.b64encode((out / p).read_bytes()).decode()}">'
        f"<figcaption>{p}</figcaption></figure>"
        for p in plots
    )
    prep = html.escape(json.dumps(report, indent=2))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kubetune: {html.escape(name)}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
img{{max-width:100%}}figure{{margin:1em 0}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>{html.escape(name)}</h1><p>{html.escape("; ".join(facts))}.</p>
<h2>Test set</h2><table><tr><th>metric</th>{head}</tr>{"".join(body)}</table>
<p>Intervals: 95% bootstrap over the test rows.</p>
<h2>Plots</h2>{images}
<h2>Data preparation</h2><pre>{prep}</pre></body></html>
"""


def _cell(values: dict[str, Any], key: str) -> str:
    if key not in values:
        return "-"
    interval = (values.get("intervals") or {}).get(key)
    text = f"{float(values[key]):.4f}"
    return f"{text} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else text
