"""Renders the chart's two Grafana dashboards to PNGs from a live Prometheus (``make screenshots``), so a reader sees
what the dashboards show before installing anything.

A small renderer, not Grafana: each panel of charts/kubetune/files/dashboards/*.json is drawn at its gridPos with
its own queries (template variables filled in, ``$__rate_interval`` = 1m): time series as lines over the window
(``query_range``), stat, gauge, bar-gauge and table panels from an instant query at the window's end.

    python hack/render_dashboards.py --prometheus http://127.0.0.1:16448 --finetunejob two-workers-lora \
        --start 1700000000 --end 1700000300 --out docs/dashboards
"""

from __future__ import annotations

import argparse
import json
import re
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.gridspec import GridSpec

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "charts" / "kubetune" / "files" / "dashboards"
ROW_INCHES, COLUMN_INCHES = 0.42, 0.75


def query(prometheus: str, path: str, **params: Any) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    return list(body["data"]["result"]) if body.get("status") == "success" else []


def fill(expr: str, variables: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", "1m")
    return re.sub(r"\$(\w+)", lambda m: variables.get(m.group(1), ".*"), expr)


def legend(target: dict[str, Any], metric: dict[str, str]) -> str:
    form = target.get("legendFormat") or ""
    if form:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), form)
    labels = {k: v for k, v in metric.items() if k not in ("__name__", "instance", "job", "pod", "service")}
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or metric.get("__name__", "")


def draw(ax: Any, panel: dict[str, Any], prometheus: str, variables: dict[str, str], start: float, end: float) -> None:
    ax.set_title(panel.get("title", ""), fontsize=9, loc="left")
    targets = [t for t in panel.get("targets") or [] if t.get("expr")]
    if panel.get("type") == "timeseries":
        step = max(5, int((end - start) / 120))
        drawn = 0
        for target in targets:
            for series in query(
                prometheus, "query_range", query=fill(target["expr"], variables), start=start, end=end, step=step
            ):
                xs = [datetime.fromtimestamp(float(t), UTC) for t, _ in series["values"]]
                ax.plot(xs, [float(v) for _, v in series["values"]], label=legend(target, series["metric"])[:40])
                drawn += 1
        if drawn:
            ax.legend(fontsize=6, loc="best")
            ax.tick_params(labelsize=6)
            ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%H:%M:%S"))
        else:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", color="grey", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        return
    rows = [
        (legend(t, r["metric"]), float(r["value"][1]))
        for t in targets
        for r in query(prometheus, "query", query=fill(t["expr"], variables), time=end)
    ]
    ax.set_xticks([])
    ax.set_yticks([])
    if not rows:
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color="grey", transform=ax.transAxes)
    elif panel.get("type") == "bargauge":
        ax.barh([label[:30] for label, _ in rows], [value for _, value in rows], color="tab:green")
        ax.tick_params(labelsize=6)
        ax.set_yticks(range(len(rows)), [label[:30] for label, _ in rows])
    elif panel.get("type") == "table":
        text = "\n".join(f"{label[:60]:<60} {value:.4g}" for label, value in rows[:8])
        ax.text(0.01, 0.95, text, ha="left", va="top", family="monospace", fontsize=6, transform=ax.transAxes)
    else:  # stat and gauge: the value (or the label where the value is a 1 of a state, as Phase)
        label, value = rows[0]
        shown = label.split("=")[-1] if panel.get("title") == "Phase" else f"{value:.3g}"
        ax.text(0.5, 0.45, shown, ha="center", va="center", fontsize=16, color="tab:green", transform=ax.transAxes)


def render(dashboard: Path, prometheus: str, variables: dict[str, str], start: float, end: float, out: Path) -> Path:
    spec = json.loads(dashboard.read_text())
    panels = [p for p in spec["panels"] if "gridPos" in p]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    figure = plt.figure(figsize=(24 * COLUMN_INCHES, height * ROW_INCHES + 0.6))
    grid = GridSpec(height, 24, figure=figure, hspace=4.0, wspace=1.5)
    for panel in panels:
        pos = panel["gridPos"]
        ax = figure.add_subplot(grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]])
        draw(ax, panel, prometheus, variables, start, end)
    where = ", ".join(f"{k}={v}" for k, v in variables.items())
    figure.suptitle(f"{spec['title']}  ({where}; rendered from Prometheus by hack/render_dashboards.py)", fontsize=11)
    path = out / f"{dashboard.stem}.png"
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--finetunejob", required=True)
    parser.add_argument("--start", type=float, required=True, help="window start (Unix seconds)")
    parser.add_argument("--end", type=float, required=True, help="window end (Unix seconds)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboards")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    variables = {"namespace": args.namespace, "finetunejob": args.finetunejob, "datasource": "prometheus"}
    for dashboard in sorted(DASHBOARDS.glob("*.json")):
        print(render(dashboard, args.prometheus, variables, args.start, args.end, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
