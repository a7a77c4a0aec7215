"""Evaluation on the validation and test splits: loss and perplexity, exact match and ROUGE-L of generated
answers (CausalLM), accuracy, macro precision/recall/F1 and the confusion matrix (Classification, scikit-learn).

Loss and classification metrics are computed on each rank's share of the rows and summed across ranks;
generation runs on rank 0 only (callers wait for it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from kubetune.api.wire import HEADLINE

from .batches import IGNORE, Tokenized, batches, bos
from .formats import Example

_WORD = re.compile(r"\w+")


def headline(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The headline figures of ``metrics``, rounded: what summaries, statuses and stage results carry."""
    return {k: round(float(v), 6) for k, v in (metrics or {}).items() if k in HEADLINE}


RESAMPLES = 1000


def interval(values: list[float], resamples: int = RESAMPLES, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the mean of per-row ``values`` (percentiles of seeded resampled means)."""
    import numpy as np

    if not values:
        return [0.0, 0.0]
    data = np.asarray(values, dtype=float)
    means = data[np.random.default_rng(seed).integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    return _central_95(means)


def _central_95(scores: Any) -> list[float]:
    """Percentiles 2.5 and 97.5 of resampled scores, rounded as metrics are."""
    import numpy as np

    return [round(float(np.percentile(scores, 2.5)), 6), round(float(np.percentile(scores, 97.5)), 6)]


def f1_interval(
    truth: list[int], predicted: list[int], classes: int, resamples: int = RESAMPLES, seed: int = 0
) -> list[float]:
    """95% bootstrap interval of macro F1 (classes absent from a resample and never predicted score 0, as
    scikit-learn's zero_division=0 does)."""
    import numpy as np

    if not truth:
        return [0.0, 0.0]
    t, p = np.asarray(truth), np.asarray(predicted)
    scores = []
    for rows in np.random.default_rng(seed).integers(0, len(t), (resamples, len(t))):
        tt, pp = t[rows], p[rows]
        tp = np.bincount(tt[tt == pp], minlength=classes)
        support, guessed = np.bincount(tt, minlength=classes), np.bincount(pp, minlength=classes)
        denominator = support + guessed
        scores.append(float(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0).mean()))
    return _central_95(scores)


def _sum(values: list[float], accelerator: Any) -> list[float]:
    """Element-wise sum over ranks (no-op in one process)."""
    if accelerator is None or accelerator.num_processes == 1:
        return values
    import torch

    return [float(v) for v in accelerator.reduce(torch.tensor(values, device=accelerator.device), "sum")]


def _share(rows: Sequence[Any], accelerator: Any) -> Sequence[Any]:
    if accelerator is None:
        return rows
    return rows[accelerator.process_index :: accelerator.num_processes]


def causal_loss(model: Any, rows: Sequence[Tokenized], batch_size: int, pad_id: int, accelerator: Any = None) -> float:
    """Mean per-token loss over ``rows`` (no gradients)."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in batches(_share(rows, accelerator), batch_size, pad_id, seed=None):
            if accelerator is not None:
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(model(**batch).loss) * n
            tokens += n
    model.train()
    total, count = _sum([total, float(tokens)], accelerator)
    return total / max(count, 1.0)


def loss_metrics(loss: float) -> dict[str, float]:
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def classification(
    model: Any, rows: Sequence[Tokenized], batch_size: int, pad_id: int, labels: list[str], accelerator: Any = None
) -> dict[str, Any]:
    """Loss, accuracy, macro precision/recall/F1 and the confusion matrix (rows: true label, columns: predicted)."""
    import torch
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    model.eval()
    truth: list[int] = []
    predicted: list[int] = []
    total = 0.0
    with torch.no_grad():
        for batch in batches(_share(rows, accelerator), batch_size, pad_id, seed=None, classification=True):
            if accelerator is not None:
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            out = model(**batch)
            total += float(out.loss) * len(batch["labels"])
            truth += batch["labels"].tolist()
            predicted += out.logits.argmax(-1).tolist()
    model.train()
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        truth = [t for part in gather_object([truth]) for t in part]
        predicted = [p for part in gather_object([predicted]) for p in part]
        total = _sum([total], accelerator)[0]
    classes = list(range(len(labels)))
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, predicted, labels=classes, average="macro", zero_division=0
    )
    return {
        "loss": total / max(len(truth), 1),
        "accuracy": float(accuracy_score(truth, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "intervals": {
            "accuracy": interval([float(a == b) for a, b in zip(truth, predicted, strict=True)]),
            "f1": f1_interval(truth, predicted, len(labels)),
        },
        "confusionMatrix": confusion_matrix(truth, predicted, labels=classes).tolist(),
        "labels": labels,
        "samples": len(truth),
    }


def normalize_answer(text: str) -> str:
    """Lower case, words only: 'The answer: 5.' and 'the answer 5' match."""
    return " ".join(_WORD.findall(text.lower()))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on lower-cased words (longest common subsequence)."""
    a, b = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not a or not b:
        return float(a == b)
    previous = [0] * (len(b) + 1)
    for word in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """A prompt's token ids as training saw them: BOS first (where the tokenizer has one), then the text."""
    return bos(tokenizer, text) + list(tokenizer(text, add_special_tokens=False)["input_ids"])


def generate(
    model: Any, tokenizer: Any, ids: list[int], max_new_tokens: int, stop_at_eos: bool = True, **sampling: Any
) -> list[int]:
    """The token ids ``model`` generates after ``ids``: greedy unless ``sampling`` says otherwise (callers hold
    ``torch.no_grad()``)."""
    import torch

    device = next(model.parameters()).device
    ends = {"eos_token_id": tokenizer.eos_token_id} if stop_at_eos else {}
    output = model.generate(
        input_ids=torch.tensor([ids], device=device),
        attention_mask=torch.ones((1, len(ids)), dtype=torch.long, device=device),
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        **{"do_sample": False, **sampling, **ends},
    )
    return list(output[0, len(ids) :].tolist())


def _prompt(
    tokenizer: Any, prompt: str, prefix: str, head: list[int], have_cache: bool, max_prompt_tokens: int | None
) -> tuple[list[int], bool]:
    """The prompt's token ids (the prefix's own ``head``, then the rest's) and whether the prefix's cache fits
    them; a prompt over ``max_prompt_tokens`` keeps its last tokens (after BOS) and cannot reuse the cache."""
    if head and prompt.startswith(prefix):
        ids = head + list(tokenizer(prompt[len(prefix) :], add_special_tokens=False)["input_ids"])
    else:
        ids = prompt_ids(tokenizer, prompt)
    cached = have_cache and ids[: len(head)] == head
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        first = bos(tokenizer, prompt)
        ids, cached = first + ids[len(ids) - max_prompt_tokens + len(first) :], False
    return ids, cached


def _score(tokenizer: Any, example: Example, new: list[int]) -> tuple[float, float, dict[str, str]]:
    """Exact match and ROUGE-L of the generated tokens ``new`` (cut at EOS) against the example's target, and
    the sample kept for the report."""
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    reference = example.target.replace(tokenizer.eos_token or "\x00", "").strip()
    sample = {"prompt": example.prompt[-200:], "reference": reference, "generated": answer}
    return float(normalize_answer(answer) == normalize_answer(reference)), rouge_l(answer, reference), sample


def generation(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int,
    samples_kept: int = 5,
    max_prompt_tokens: int | None = None,
    prefix: str = "",
    accelerator: Any = None,
    lockstep: bool = False,
) -> dict[str, Any]:
    """Greedy answers to each example's prompt, scored against its target: exact match and ROUGE-L (means).
    A prompt longer than ``max_prompt_tokens`` keeps its last tokens. A ``prefix`` that every prompt starts
    with (the few-shot examples) is run through the model once and its key/value cache reused for each prompt;
    its tokens are the prefix's own, then the rest's, either way.

    With an ``accelerator`` of several processes every rank answers its share and the scores are gathered in
    the examples' order, so the figures are those of one process. ``lockstep`` (FSDP, where every forward pass
    is a collective) gives every rank the same number of prompts (a repeated one, not scored, fills a short
    share) and never stops at EOS early (the answer is cut there instead): all ranks run the same passes."""
    import copy

    import torch

    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    mine = list(range(rank, len(examples), world))
    if lockstep:
        mine += [-1] * (-(-len(examples) // world) - len(mine))
    model.eval()
    scored: list[tuple[int, float, float, dict[str, str]]] = []
    with torch.no_grad():
        head = prompt_ids(tokenizer, prefix) if prefix else []
        cache: Any = None
        if head and (max_prompt_tokens is None or len(head) < max_prompt_tokens):
            device = next(model.parameters()).device
            cache = model(input_ids=torch.tensor([head], device=device), use_cache=True).past_key_values
        for index in mine:
            example = examples[max(index, 0)]
            ids, cached = _prompt(tokenizer, example.prompt, prefix, head, cache is not None, max_prompt_tokens)
            reuse: dict[str, Any] = {"cache": copy.deepcopy(cache)} if cached else {}
            new = generate(model, tokenizer, ids, max_new_tokens, stop_at_eos=not lockstep, **reuse)
            if index >= 0:
                scored.append((index, *_score(tokenizer, example, new)))
    model.train()
    if world > 1:
        from accelerate.utils import gather_object

        scored = sorted(s for part in gather_object([scored]) for s in part)
    exact, rouge = [s[1] for s in scored], [s[2] for s in scored]
    n = max(len(examples), 1)
    return {
        "exactMatch": sum(exact) / n,
        "rougeL": sum(rouge) / n,
        "samples": len(examples),
        "intervals": {"exactMatch": interval(exact), "rougeL": interval(rouge)},
        "examples": [s[3] for s in scored[:samples_kept]],
    }
