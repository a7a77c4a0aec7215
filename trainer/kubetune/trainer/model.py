"""Loads the base model and tokenizer and wraps the model for the method: Full, LoRA or QLoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from kubetune.api import MethodType
from kubetune.api.training import LoRA, Method

from .errors import ConfigError


def load(path: Path, method: Method, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) ready to train with ``method``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise ConfigError(f"spec.model: no Hugging Face model at {path} (config.json missing)")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if method.type == MethodType.QLORA:
        kwargs["quantization_config"] = _bnb_config(method)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if method.type == MethodType.FULL:
        return model, tokenizer
    return _with_lora(model, method.lora or LoRA(), quantized=method.type == MethodType.QLORA), tokenizer


def _bnb_config(method: Method) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    from kubetune.api.training import Quantization

    q = method.quantization or Quantization()
    dtype = {"BFloat16": torch.bfloat16, "Float16": torch.float16, "Float32": torch.float32}[q.compute_dtype]
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type.lower(),
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=dtype,
    )


def _with_lora(model: Any, lora: LoRA, quantized: bool) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets: Any = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias=cast(Any, {"None": "none", "All": "all", "LoRAOnly": "lora_only"}[lora.bias]),
        use_rslora=lora.use_rslora,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ConfigError(f"spec.method.lora.targetModules: {error}") from error
