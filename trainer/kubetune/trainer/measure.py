"""What is measured on a model: validation scores, test metrics (per task), and before tuning the zero-shot and
few-shot baselines, the retention loss and passkey retrieval. Loss, classification metrics and generated answers
run on every rank's share (in lockstep under FSDP); the passkey check runs on rank 0 while the others wait
(on all ranks under FSDP).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kubetune.api import TaskType
from kubetune.api.spec import FineTuneJobSpec

from . import baselines, evaluate, longcontext, runtime
from .batches import Tokenized
from .formats import Example
from .prepare import PreparedData


def scores(
    spec: FineTuneJobSpec, model: Any, tokenizer: Any, rows: Sequence[Tokenized], data: PreparedData, accelerator: Any
) -> dict[str, Any]:
    """Classification metrics of ``rows``, or their loss (CausalLM); what validation watches."""
    batch, pad = spec.training.per_device_batch_size, tokenizer.pad_token_id
    if data.labels is not None:
        return evaluate.classification(model, rows, batch, pad, data.labels, accelerator)
    return {"loss": evaluate.causal_loss(model, rows, batch, pad, accelerator)}


def test_metrics(
    spec: FineTuneJobSpec,
    model: Any,
    tokenizer: Any,
    data: PreparedData,
    accelerator: Any,
    split: tuple[Sequence[Tokenized], Sequence[Example]] | None = None,
) -> dict[str, Any]:
    """Test-split metrics (or those of ``split``'s rows and examples): loss and perplexity plus exact match and
    ROUGE-L, or classification metrics."""
    limit = spec.evaluation.max_samples
    rows, examples = split or (data.rows["test"], data.examples["test"])
    rows, examples = rows[:limit], examples[:limit]
    if not rows:
        return {}
    metrics = scores(spec, model, tokenizer, rows, data, accelerator)
    if data.labels is not None:
        return metrics
    metrics = evaluate.loss_metrics(metrics["loss"])
    new_tokens, unwrapped = spec.evaluation.max_new_tokens, accelerator.unwrap_model(model)
    metrics.update(evaluate.generation(unwrapped, tokenizer, examples, new_tokens, **_ranks(accelerator)))
    return metrics


def few_shot_metrics(
    spec: FineTuneJobSpec, model: Any, tokenizer: Any, data: PreparedData, accelerator: Any
) -> dict[str, Any]:
    """The base model's generated answers (exact match, ROUGE-L) with spec.evaluation.fewShot.k solved training
    examples before each test prompt. No loss: a prompted model's loss on the answer is not comparable to a
    tuned model's, and it would cost a second pass over the long prompts."""
    assert spec.evaluation.few_shot is not None
    limit, budget = spec.evaluation.max_samples, spec.training.max_seq_length
    solved = baselines.shots(data.examples["train"], spec.evaluation.few_shot)
    examples = [baselines.with_shots(e, solved) for e in data.examples["test"][:limit]]
    if not examples:
        return {}
    new_tokens = spec.evaluation.max_new_tokens
    unwrapped, prompt_budget = accelerator.unwrap_model(model), max(budget - new_tokens, 1)
    prefix = baselines.prefix(solved)
    metrics = evaluate.generation(
        unwrapped, tokenizer, examples, new_tokens, 5, prompt_budget, prefix, **_ranks(accelerator)
    )
    return {"k": len(solved), **metrics}


def _ranks(accelerator: Any) -> dict[str, Any]:
    """How generation shares its prompts: every rank answers its part, in lockstep under FSDP."""
    return {"accelerator": accelerator, "lockstep": runtime.sharded(accelerator)}


def before_tuning(
    spec: FineTuneJobSpec, model: Any, tokenizer: Any, data: PreparedData, accelerator: Any
) -> dict[str, Any]:
    """What is measured on the base model: zero-shot test metrics (the baseline), few-shot, the retention loss
    and passkey retrieval, as the evaluation and guard settings ask."""
    before: dict[str, Any] = {"baseline": {}}
    if spec.evaluation.enabled and spec.evaluation.baseline:
        before["baseline"] = test_metrics(spec, model, tokenizer, data, accelerator)
        if spec.evaluation.few_shot is not None:
            before["fewShot"] = few_shot_metrics(spec, model, tokenizer, data, accelerator)
        before["baseline"].update(passkey(spec, model, tokenizer, accelerator))
    if spec.forgetting_guard is not None:
        before["retentionLoss"] = retention_loss(spec, model, tokenizer, data, accelerator)
    return before


def retention_loss(
    spec: FineTuneJobSpec, model: Any, tokenizer: Any, data: PreparedData, accelerator: Any
) -> float | None:
    """Loss on the held-out General rows; None when a stage's format left none."""
    rows, batch = data.rows.get("retention", []), spec.training.per_device_batch_size
    return evaluate.causal_loss(model, rows, batch, tokenizer.pad_token_id, accelerator) if rows else None


def passkey(spec: FineTuneJobSpec, model: Any, tokenizer: Any, accelerator: Any) -> dict[str, float]:
    extension = spec.context_extension
    if extension is None or not extension.passkey_samples or spec.task.type != TaskType.CAUSAL_LM:
        return {}
    if runtime.sharded(accelerator):  # every forward is a collective: all ranks run the same (fixed-length) prompts
        return longcontext.passkey(accelerator.unwrap_model(model), tokenizer, extension)
    result = {}
    if accelerator.is_main_process:
        result = longcontext.passkey(accelerator.unwrap_model(model), tokenizer, extension)
    accelerator.wait_for_everyone()
    return result
