"""How the model is trained: method (Full, LoRA, QLoRA), hyperparameters, validation, evaluation, checkpoints."""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel, Rule
from .enums import (
    CheckpointUpload,
    ComputeDtype,
    DataChangeAction,
    Distributed,
    LoRABias,
    MethodType,
    Precision,
    QuantType,
    Scheduler,
    TaskType,
    ValidationMetric,
)


class Task(ApiModel):
    """What the model learns to do."""

    type: TaskType = Field(
        default=TaskType.CAUSAL_LM, description="CausalLM (supervised fine-tuning) or Classification."
    )
    labels: list[str] | None = Field(
        default=None,
        min_length=2,
        max_length=1000,
        description="Class labels in index order (Classification); taken from the training data, sorted, when unset.",
    )

    rules = (
        Rule(
            cel="self.type == 'Classification' || !has(self.labels)",
            message="labels is only allowed when type is Classification",
            check=lambda s: s.type == TaskType.CLASSIFICATION or s.labels is None,
        ),
    )


class LoRA(ApiModel):
    """Low-rank adapter settings (LoRA and QLoRA)."""

    rank: int = Field(default=16, ge=1, le=1024, description="Rank r of the low-rank update.")
    alpha: int = Field(default=32, ge=1, le=4096, description="Scaling numerator: the update is scaled by alpha/r.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
        description="Module names (or 'all-linear') that get adapters.",
    )
    bias: LoRABias = Field(default=LoRABias.NONE, description="Which biases are trained.")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha/sqrt(r).")


class Quantization(ApiModel):
    """4-bit quantization of the frozen base model (QLoRA only)."""

    quant_type: QuantType = Field(default=QuantType.NF4, description="4-bit data type.")
    double_quant: bool = Field(default=True, description="Quantize the quantization constants too.")
    compute_dtype: ComputeDtype = Field(default=ComputeDtype.BFLOAT16, description="Dtype of the matmuls.")


class Method(ApiModel):
    """Which weights are trained, and how."""

    type: MethodType = Field(default=MethodType.LORA, description="Full, LoRA or QLoRA.")
    lora: LoRA | None = Field(default=None, description="Adapter settings; defaults apply when unset (LoRA, QLoRA).")
    quantization: Quantization | None = Field(
        default=None, description="4-bit settings; defaults apply when unset (QLoRA)."
    )

    rules = (
        Rule(
            cel="self.type != 'Full' || !has(self.lora)",
            message="lora is only allowed when type is LoRA or QLoRA",
            check=lambda s: s.type != MethodType.FULL or s.lora is None,
        ),
        Rule(
            cel="self.type == 'QLoRA' || !has(self.quantization)",
            message="quantization is only allowed when type is QLoRA",
            check=lambda s: s.type == MethodType.QLORA or s.quantization is None,
        ),
    )


class Training(ApiModel):
    """Optimisation hyperparameters (AdamW)."""

    learning_rate: float = Field(default=2.0e-4, gt=0, le=1, description="Peak learning rate.")
    epochs: int = Field(default=3, ge=1, le=1000, description="Passes over the training split.")
    max_steps: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Stop after this many optimizer steps, before epochs run out."
    )
    per_device_batch_size: int = Field(default=4, ge=1, le=4096, description="Examples per process per micro-batch.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    warmup_ratio: float | None = Field(
        default=None, ge=0, le=0.5, description="Share of total steps spent warming up; 0.03 when neither is set."
    )
    warmup_steps: int | None = Field(default=None, ge=0, le=10_000_000, description="Warmup length in steps.")
    scheduler: Scheduler = Field(default=Scheduler.COSINE, description="Learning-rate schedule after warmup.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW decoupled weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0, le=1000, description="Gradient clipping norm; 0 disables it.")
    dropout: float | None = Field(
        default=None, ge=0, lt=1, description="Override of the model's own dropout probabilities (overfitting)."
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Label smoothing of the cross-entropy loss (overfitting); 0 trains on the hard targets.",
    )
    neftune_noise_alpha: float | None = Field(
        default=None,
        gt=0,
        le=100,
        description="NEFTune: uniform noise of scale alpha/sqrt(length x width) added to the input embeddings "
        "while training (instruction data); off when unset.",
    )
    max_seq_length: int = Field(default=1024, ge=16, le=131072, description="Longest training sequence in tokens.")
    packing: bool = Field(
        default=True, description="Pack several examples per sequence without padding (position ids reset)."
    )
    precision: Precision = Field(default=Precision.AUTO, description="Numeric precision.")
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations to save memory.")
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed of initialisation, dropout and data order.")
    step_timeout_seconds: int | None = Field(
        default=600,
        ge=10,
        le=86400,
        description="The step-time watchdog: a rank whose training step runs longer than this, or that stops "
        "responding for as long, is hung; the round stops with a message naming the rank and the workers restart "
        "from the last checkpoint (counted against maxRestarts), instead of waiting out the 30-minute timeout of "
        "NCCL and gloo. Unset (null) turns it off.",
    )
    distributed: Distributed = Field(
        default=Distributed.DDP,
        description="DDP: every process holds the whole model (gloo on CPU, nccl on GPU). FSDP: parameters, "
        "gradients and optimizer state are sharded across processes (FSDP2; Full fine-tuning only; gloo on CPU, "
        "nccl on GPU).",
    )

    rules = (
        Rule(
            cel="!has(self.warmupRatio) || !has(self.warmupSteps)",
            message="set at most one of warmupRatio and warmupSteps",
            check=lambda s: s.warmup_ratio is None or s.warmup_steps is None,
        ),
    )


class EarlyStopping(ApiModel):
    """Stop when the validation metric has not improved for a while."""

    patience: int = Field(ge=1, le=1000, description="Validations without improvement before stopping.")
    min_delta: float = Field(default=0.0, ge=0, le=1000, description="Smallest change that counts as improvement.")


class Validation(ApiModel):
    """Periodic evaluation on the validation split; the best checkpoint is kept."""

    every_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Validate every N optimizer steps; at each epoch's end when unset.",
    )
    metric: ValidationMetric = Field(
        default=ValidationMetric.LOSS,
        description="Metric to watch: Loss (lower is better), Accuracy or F1 (higher is better; Classification).",
    )
    early_stopping: EarlyStopping | None = Field(default=None, description="Early stopping; off when unset.")
    restore_best: bool = Field(
        default=True,
        description="Deliver the best validation step's weights: the test evaluation, the saved model or adapter, "
        "the merged model and the deployment use them. When false, or when no validation ran, the last step's.",
    )


class Evaluation(ApiModel):
    """Test-set evaluation after training, and of the base model first for comparison."""

    enabled: bool = Field(default=True, description="Evaluate on the test split after training.")
    baseline: bool = Field(default=True, description="Evaluate the base model on the same test split first.")
    max_samples: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Evaluate at most this many test rows (all when unset)."
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=4096, description="Generation length for exact-match and ROUGE-L (CausalLM)."
    )
    few_shot: FewShot | None = Field(
        default=None,
        description="Also evaluate the base model few-shot (CausalLM), so results show fine-tuned vs few-shot vs "
        "zero-shot; off when unset.",
    )


class FewShot(ApiModel):
    """A few-shot baseline: the base model prompted with k training examples before each test prompt."""

    k: int = Field(default=3, ge=1, le=64, description="Training examples put in front of each test prompt.")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the choice of examples.")


class Checkpointing(ApiModel):
    """Resumable checkpoints: weights, optimizer, scheduler, RNG and data position."""

    every_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Checkpoint every N optimizer steps; at each epoch's end when unset.",
    )
    keep: int = Field(default=2, ge=1, le=100, description="Newest checkpoints kept (the best one is kept as well).")
    on_data_change: DataChangeAction = Field(
        default=DataChangeAction.FAIL,
        description="A resume whose data files changed since the checkpoint: Fail (exit 78, reason DataChanged, "
        "naming the dataset) or Restart (train again from step 0 on the new data).",
    )
    upload: CheckpointUpload = Field(
        default=CheckpointUpload.BACKGROUND,
        description="With output.uri, how checkpoints go there: Background (training never waits; a checkpoint due "
        "while an upload is under way stays local) or Every (each one is uploaded; the next checkpoint waits for "
        "the previous upload).",
    )
