"""Packed loss equals padded loss on the same examples (the gate for turning packing on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.trainer.batches import collate, tokenize
from kubetune.trainer.formats import Example
from kubetune.trainer.packing import collate_packed, pack
from kubetune.trainer.tiny import build_tiny_llama

EXAMPLES = [
    Example.pair("### Instruction:\nWhat is 2 plus 3?\n### Response:\n", "5", "t", 1),
    Example.pair("### Instruction:\nGive the opposite of the word.\n### Input:\nhot\n### Response:\n", "cold", "t", 2),
    Example.pair("", "A completion row without a prompt, trained on every token.", "t", 3),
    Example.pair("### Instruction:\nSpell the word backwards.\n### Input:\nriver\n### Response:\n", "revir", "t", 4),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_llama(Path(tmp_path_factory.mktemp("m")) / "tiny", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_pack_respects_the_token_budget() -> None:
    rows = [([1] * n, [1] * n) for n in (5, 4, 3, 6, 2)]
    groups = pack(rows, max_tokens=9)
    assert [[len(r[0]) for r in g] for g in groups] == [[5, 4], [3, 6], [2]]


def test_packed_loss_equals_padded_loss(tiny: tuple[object, object]) -> None:
    import torch

    model, tokenizer = tiny
    rows = tokenize(EXAMPLES, tokenizer, max_len=128)
    with torch.no_grad():
        padded = model(**collate(rows, tokenizer.pad_token_id)).loss  # type: ignore[operator, attr-defined]
        packed = model(**collate_packed(rows)).loss  # type: ignore[operator]
    assert abs(float(padded) - float(packed)) < 1e-4, (float(padded), float(packed))


def test_without_reset_positions_the_losses_differ(tiny: tuple[object, object]) -> None:
    """The parity above is not an accident: packing without position ids leaks attention across examples."""
    import torch

    model, tokenizer = tiny
    rows = tokenize(EXAMPLES, tokenizer, max_len=128)
    batch = collate_packed(rows)
    del batch["position_ids"]
    with torch.no_grad():
        padded = model(**collate(rows, tokenizer.pad_token_id)).loss  # type: ignore[operator, attr-defined]
        leaky = model(**batch).loss  # type: ignore[operator]
    assert abs(float(padded) - float(leaky)) > 1e-4


def test_packed_attention_keeps_the_loss_and_its_gradients(tmp_path: Path) -> None:
    """``kubetune_packed`` (causal attention per example, from the batch's boundaries) against SDPA on the padded
    batch: same loss and same gradients, and it reads the boundaries (dropping them leaks across examples)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.trainer.packing import register_packed_attention

    path = build_tiny_llama(tmp_path / "tiny", seed=3)
    tokenizer = AutoTokenizer.from_pretrained(path)
    rows = tokenize(EXAMPLES, tokenizer, max_len=128)
    sdpa = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    packed = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation=register_packed_attention()
    )
    padded_loss = sdpa(**collate(rows, tokenizer.pad_token_id)).loss
    packed_loss = packed(**collate_packed(rows)).loss
    padded_loss.backward()
    packed_loss.backward()
    assert abs(padded_loss.item() - packed_loss.item()) < 1e-4
    for (name, a), (_, b) in zip(sdpa.named_parameters(), packed.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
    batch = collate_packed(rows)
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "position_ids"):
        del batch[key]
    with torch.no_grad():
        assert abs(float(packed(**batch).loss) - float(packed_loss)) > 1e-3


HEADLINES = [
    ("Stocks rallied after the central bank held rates", 0),
    ("The striker scored twice in the final", 1),
    ("A new chip doubles battery life in phones", 2),
    ("Parliament passed the budget late on Friday night after a long and heated debate", 3),
    ("Rain", 1),
]
CLASSES = 4


def classification_parity(path: Path, lora: bool) -> dict[str, float]:
    """Class logits, loss and gradients of one padded and one packed batch of the same headlines, through the
    trainer's own step (``summed_loss``) and model loading (packed attention, PEFT's head copy when ``lora``);
    returns the largest absolute differences."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kubetune.trainer.packing import register_packed_attention
    from kubetune.trainer.pooling import packed_class_logits, packs_classification
    from kubetune.trainer.step import summed_loss

    tokenizer = AutoTokenizer.from_pretrained(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = [(tokenizer(text)["input_ids"], [label]) for text, label in HEADLINES]
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=CLASSES, pad_token_id=pad, dtype=torch.float32, attn_implementation=register_packed_attention()
    )
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="SEQ_CLS"))
    assert packs_classification(model)
    model.eval()  # no dropout: the two passes must see the same network
    figures, grads = {}, []
    padded, packed = collate(rows, pad, classification=True), collate_packed(rows, pad, classification=True)
    for batch in (padded, packed):
        model.zero_grad()
        loss = summed_loss(model, batch, 0.0, classification=True)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        figures["loss_padded" if batch is padded else "loss_packed"] = float(loss.detach())
    with torch.no_grad():
        by_padding = model(**{k: v for k, v in padded.items() if k != "labels"}).logits
        by_packing = packed_class_logits(model, packed)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    return {
        "logits": float((by_padding - by_packing).abs().max()),
        "loss": abs(figures["loss_padded"] - figures["loss_packed"]),
        "gradients": max(float((grads[0][n] - grads[1][n]).abs().max()) for n in grads[0]),
    }


@pytest.mark.parametrize("lora", [False, True])
def test_packed_classification_equals_padded_in_logits_loss_and_gradients(tmp_path: Path, lora: bool) -> None:
    deltas = classification_parity(build_tiny_llama(tmp_path / "tiny", seed=5), lora)
    print(deltas)
    assert max(deltas.values()) <= 1e-4, deltas


def test_packed_classification_on_the_real_model_when_cached() -> None:
    from tests.trainer.test_real_model import CACHE, MODEL

    if not (CACHE / MODEL / "config.json").is_file():
        pytest.skip(f"{CACHE / MODEL} is not built (hack/model-cache.sh)")
    deltas = classification_parity(CACHE / MODEL, lora=True)
    print(deltas)
    assert max(deltas.values()) <= 1e-4, deltas


def test_a_head_that_does_not_pool_per_token_outputs_is_not_packed() -> None:
    import torch

    from kubetune.trainer.pooling import packs_classification

    assert not packs_classification(torch.nn.Sequential(torch.nn.Linear(2, 2)))
