"""Resumable checkpoints: trainable weights, optimizer, scheduler, RNG state per rank and the data position.

A checkpoint is written into a temporary directory and renamed into place, so a run killed while writing one
never leaves a half-written checkpoint behind; only ``keep`` newest are kept. A checkpoint records the hash of
the spec it belongs to: a run with a different spec never resumes from it. Weights are stored whole (gathered
from every rank under FSDP) and the optimizer per rank (FSDP's is sharded: resume on as many processes).
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import runtime
from .errors import ConfigError

PREFIX = "step-"


@dataclass
class TrainerState:
    """Where training is: enough to continue exactly where a checkpoint was taken."""

    spec_hash: str
    step: int = 0
    epoch: int = 0
    micro_batches_done: int = 0
    """Micro-batches of ``epoch`` already trained on (the data order of an epoch is fixed by its seed)."""
    train_history: list[dict[str, float]] = field(default_factory=list)
    validation_history: list[dict[str, Any]] = field(default_factory=list)
    best_value: float | None = None
    best_step: int = 0
    bad_validations: int = 0
    tokens_seen: int = 0
    stopped_early: bool = False
    data_sha256: dict[str, str] = field(default_factory=dict)
    """Each dataset's content hash when training started (a resume on other data fails or restarts)."""


def directory(out: Path) -> Path:
    return out / "checkpoints"


def latest(out: Path, spec_hash: str) -> Path | None:
    """The newest complete checkpoint of this spec, if any."""
    candidates = sorted(directory(out).glob(f"{PREFIX}*"), reverse=True)
    for path in candidates:
        state = path / "state.json"
        if state.is_file() and json.loads(state.read_text()).get("spec_hash") == spec_hash:
            return path
    return None


def changed_data(path: Path, sha256: dict[str, str]) -> list[str]:
    """The datasets whose content hash differs from the one the checkpoint at ``path`` recorded (none for a
    checkpoint that recorded none)."""
    recorded: dict[str, str] = json.loads((path / "state.json").read_text()).get("data_sha256") or {}
    return sorted(name for name, digest in recorded.items() if sha256.get(name) != digest)


def discard(out: Path, accelerator: Any) -> None:
    """Remove every checkpoint (the run starts over); rank 0 removes once every rank has stopped reading them."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(directory(out), ignore_errors=True)
    accelerator.wait_for_everyone()


def save(
    out: Path, state: TrainerState, model: Any, optimizer: Any, scheduler: Any, accelerator: Any, keep: int
) -> Path:
    """Write a checkpoint of ``state`` atomically (all ranks call this; rank 0 writes the shared files)."""
    import torch
    from safetensors.torch import save_file

    final = directory(out) / f"{PREFIX}{state.step:08d}"
    tmp = directory(out) / f".tmp-{PREFIX}{state.step:08d}"
    if accelerator.is_local_main_process:  # each node's own scratch, when the outputs go to a URI
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    rank = accelerator.process_index
    torch.save(_rng_state(), tmp / f"rng-{rank}.pt")
    torch.save(optimizer.state_dict(), tmp / f"optimizer-{rank}.pt")  # per rank: FSDP shards it
    full = accelerator.get_state_dict(model)  # a collective under FSDP: every rank calls it
    if accelerator.is_main_process:
        names = {n for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
        save_file(
            {n: t.detach().contiguous().cpu() for n, t in full.items() if n in names}, tmp / "trainable.safetensors"
        )
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
        _put_in_place(tmp, final, keep)
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process and tmp.is_dir():  # another node's scratch: its ranks' part
        _put_in_place(tmp, final, keep)
    return final


def _put_in_place(tmp: Path, final: Path, keep: int) -> None:
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(final.parent.glob(f"{PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def load(path: Path, model: Any, optimizer: Any, scheduler: Any, accelerator: Any) -> TrainerState:
    """Restore weights, optimizer, scheduler and this rank's RNG from ``path``; returns the trainer state."""
    import torch
    from safetensors.torch import load_file

    own = path / f"optimizer-{accelerator.process_index}.pt"
    saved = len(list(path.glob("optimizer-*.pt")))
    if runtime.sharded(accelerator) and saved != accelerator.num_processes:
        raise ConfigError(
            f"checkpoint {path} holds the FSDP optimizer shards of {saved} processes, this run has "
            f"{accelerator.num_processes}: resume an FSDP run with the same resources.workers x processes"
        )
    _load_whole(path, load_file(path / "trainable.safetensors"), model, accelerator)
    # DDP ranks hold identical optimizer state, so a run resumed on more processes can start from rank 0's.
    optimizer.load_state_dict(torch.load(own if own.exists() else path / "optimizer-0.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng = path / f"rng-{accelerator.process_index}.pt"
    if rng.exists():
        _set_rng_state(torch.load(rng, weights_only=False))
    return TrainerState(**json.loads((path / "state.json").read_text()))


def restore(path: Path, model: Any, accelerator: Any) -> None:
    """Load the weights that ``saving.save_weights`` wrote to ``path`` (an adapter, or a whole model in one or
    more safetensors files) back into the model being trained; every rank calls it."""
    kind, weights = _saved(path, accelerator)
    if kind == "adapter":
        from peft import set_peft_model_state_dict

        result: Any = set_peft_model_state_dict(accelerator.unwrap_model(model), weights)
        if result.unexpected_keys:
            raise RuntimeError(f"{path} has weights this model does not: {list(result.unexpected_keys)[:3]}")
        return
    _load_whole(path, weights, model, accelerator)


def _saved(path: Path, accelerator: Any) -> tuple[str, dict[str, Any]]:
    """("adapter" or "whole", the tensors) at ``path``; a rank whose node lacks them (each node's own scratch
    space when the outputs go to a URI: the main process wrote them on its own) gets rank 0's."""
    from safetensors.torch import load_file

    found: tuple[str, dict[str, Any]] | None = None
    if (path / "adapter_model.safetensors").exists():
        found = ("adapter", load_file(path / "adapter_model.safetensors"))
    elif parts := sorted(path.glob("model*.safetensors")):
        found = ("whole", {k: v for part in parts for k, v in load_file(part).items()})
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        everywhere: list[Any] = [None] * accelerator.num_processes
        dist.all_gather_object(everywhere, found is not None)
        if not all(everywhere):
            shared = [found if accelerator.is_main_process else None]
            dist.broadcast_object_list(shared, src=0)
            found = shared[0]
    if found is None:
        raise RuntimeError(f"{path} holds no saved weights")
    return found


def _load_whole(path: Path, weights: dict[str, Any], model: Any, accelerator: Any) -> None:
    """Whole tensors by parameter name into the model (into this rank's shards under FSDP); the model's other
    tensors stay as they are."""
    if runtime.sharded(accelerator):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, strict=False)
        unexpected = set_model_state_dict(model, weights, options=options).unexpected_keys
    else:
        unexpected = accelerator.unwrap_model(model).load_state_dict(weights, strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"{path} has weights this model does not: {list(unexpected)[:3]}")


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
