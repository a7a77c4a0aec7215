"""Loads the base model and tokenizer and prepares the model for the method (Full, LoRA, QLoRA), the task
(causal LM or sequence classification) and the training options (dropout override, gradient checkpointing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from kubetune.api import MethodType, TaskType
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.training import LoRA, Method

from .errors import ConfigError
from .longcontext import extended_config
from .packing import register_packed_attention


def load_tokenizer(path: Path, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, with a padding token (EOS when the model has none)."""
    from transformers import AutoTokenizer

    if not (path / "config.json").exists():
        raise ConfigError(f"spec.model: no Hugging Face model at {path} (config.json missing)")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load(path: Path, spec: FineTuneJobSpec, tokenizer: Any, labels: list[str] | None = None) -> Any:
    """The base model wrapped for ``spec.method`` and ``spec.task``, ready to train."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = _config_kwargs(path, spec, labels, tokenizer.pad_token_id)
    if spec.method.type == MethodType.QLORA:
        kwargs["quantization_config"] = bnb_config(spec.method)
    if spec.training.packing:  # plain SDPA for batches without example boundaries (evaluation, padded rows)
        kwargs["attn_implementation"] = register_packed_attention()
    if spec.task.type == TaskType.CLASSIFICATION:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if spec.training.dropout is not None:
        set_dropout(model, spec.training.dropout)
    if spec.method.type != MethodType.FULL:
        model = with_lora(model, spec.method, spec.task.type)
    if spec.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if spec.method.type != MethodType.FULL:
            model.enable_input_require_grads()
    return model


def _config_kwargs(path: Path, spec: FineTuneJobSpec, labels: list[str] | None, pad: int | None) -> dict[str, Any]:
    """from_pretrained's config arguments: the class labels (Classification), and the whole config when the
    context is extended (RoPE scaling), which then carries the labels itself."""
    kwargs: dict[str, Any] = {"trust_remote_code": spec.model.trust_remote_code}
    settings: dict[str, Any] = {}
    if labels is not None:
        settings = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
        if pad is not None:
            settings["pad_token_id"] = pad
    if spec.context_extension is None:
        return {**kwargs, **settings}
    config = extended_config(path, spec.context_extension, spec.model.trust_remote_code)
    for key, value in settings.items():
        setattr(config, key, value)
    return {**kwargs, "config": config}


def set_dropout(model: Any, p: float) -> None:
    """Override the model's own dropout: config probabilities (functional dropout) and Dropout modules."""
    import torch

    for name, value in list(model.config.to_dict().items()):
        if "dropout" in name and isinstance(value, float):
            setattr(model.config, name, p)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if hasattr(module, "attention_dropout") and isinstance(module.attention_dropout, float):
            module.attention_dropout = p


def bnb_config(method: Method) -> Any:
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


def with_lora(model: Any, method: Method, task: TaskType) -> Any:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = method.lora or LoRA()
    if method.type == MethodType.QLORA:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets: Any = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias=cast(Any, {"None": "none", "All": "all", "LoRAOnly": "lora_only"}[lora.bias]),
        use_rslora=lora.use_rslora,
        task_type="SEQ_CLS" if task == TaskType.CLASSIFICATION else "CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise ConfigError(f"spec.method.lora.targetModules: {error}") from error


def merged(base_path: Path, adapter_dir: Path, spec: FineTuneJobSpec, labels: list[str] | None) -> Any:
    """The base model (full precision, even for QLoRA) with the saved adapter merged into its weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kwargs = _config_kwargs(base_path, spec, labels, None)
    if labels is not None:
        base = AutoModelForSequenceClassification.from_pretrained(base_path, **kwargs)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_path, **kwargs)
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
