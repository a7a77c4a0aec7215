"""Saving what a run delivers: weights gathered from every rank (FSDP's shards are a collective), the tokenizer,
the merged model when asked, metrics, plots, the model card and, last, the manifest."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubetune.api import FineTuneJob, MethodType

from . import outputs, plots
from .model import merged
from .rows import PrepReport


def save(
    job: FineTuneJob,
    model_path: Path,
    model: Any,
    tokenizer: Any,
    labels: list[str] | None,
    out: Path,
    metrics: dict[str, Any],
    report: PrepReport,
    merge_adapter: bool = False,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """Weights (from ``state_dict``, the whole state gathered on this process, when given) and tokenizer, the
    merged model when asked, metrics, plots, the model card, then the manifest (last)."""
    spec = job.spec
    weights = outputs.weights_dir(out, spec)
    model.save_pretrained(weights, state_dict=state_dict)
    tokenizer.save_pretrained(weights)
    merge_adapter = merge_adapter or (spec.output is not None and spec.output.merge_adapter)
    if merge_adapter and spec.method.type != MethodType.FULL:
        merged(model_path, weights, spec, labels).save_pretrained(out / "merged")
        tokenizer.save_pretrained(out / "merged")
        outputs.readable(out / "merged")
    outputs.readable(weights)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plots.write(out, job.name, metrics, report.to_dict(), report.lengths)
    outputs.model_card(out, job, metrics, report.to_dict(), model_path)
    outputs.write_manifest(out, job, report.sha256, metrics["worldSize"], model_path, report.hub)


def save_weights(accelerator: Any, model: Any, path: Path) -> None:
    """Save the model (or adapter) from every rank's part: the state dict is gathered on all ranks (FSDP's
    shards are a collective; DDP and one process just read it), then the main process writes it."""
    state_dict = gathered_state(accelerator, model)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(path, state_dict=state_dict)
        outputs.readable(path)
    accelerator.wait_for_everyone()


def gathered_state(accelerator: Any, model: Any) -> dict[str, Any]:
    """The whole state dict on the main process (every rank must call it), without the second names of tied
    parameters (the LM head that is the embedding): FSDP gathers each name into its own tensor, so
    ``save_pretrained`` would not see that they are one and would write the embedding twice."""
    state_dict = accelerator.get_state_dict(model)
    unwrapped = accelerator.unwrap_model(model)
    first = {name for name, _ in unwrapped.named_parameters()}
    aliases = {name for name, _ in unwrapped.named_parameters(remove_duplicate=False)} - first
    return {name: tensor for name, tensor in state_dict.items() if name not in aliases}
