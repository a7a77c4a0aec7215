"""Enumerations of the FineTuneJob API: CamelCase values, as they appear in manifests."""

from enum import StrEnum


class MethodType(StrEnum):
    """How the model's weights are trained."""

    FULL = "Full"
    LORA = "LoRA"
    QLORA = "QLoRA"


class TaskType(StrEnum):
    """What the model learns to do."""

    CAUSAL_LM = "CausalLM"
    CLASSIFICATION = "Classification"


class DataFormat(StrEnum):
    """The shape of each training row."""

    INSTRUCTION = "Instruction"
    CHAT = "Chat"
    COMPLETION = "Completion"
    CLASSIFICATION = "Classification"


class FileFormat(StrEnum):
    """The encoding of a dataset file."""

    JSONL = "JSONL"
    CSV = "CSV"
    PARQUET = "Parquet"


class DatasetUsage(StrEnum):
    """Which split a dataset's rows go to."""

    SPLIT = "Split"
    TRAIN = "Train"
    VALIDATION = "Validation"
    TEST = "Test"
    GENERAL = "General"


class OverLength(StrEnum):
    """What happens to a row longer than ``maxSeqLength`` tokens."""

    TRUNCATE = "Truncate"
    DROP = "Drop"


class LoRABias(StrEnum):
    """Which bias parameters LoRA trains."""

    NONE = "None"
    ALL = "All"
    LORA_ONLY = "LoRAOnly"


class QuantType(StrEnum):
    """The 4-bit data type of QLoRA's frozen base weights."""

    NF4 = "NF4"
    FP4 = "FP4"


class ComputeDtype(StrEnum):
    """The dtype QLoRA dequantizes to for matrix multiplications."""

    BFLOAT16 = "BFloat16"
    FLOAT16 = "Float16"
    FLOAT32 = "Float32"


class Scheduler(StrEnum):
    """Learning-rate schedule after warmup."""

    LINEAR = "Linear"
    COSINE = "Cosine"
    CONSTANT = "Constant"


class Precision(StrEnum):
    """Numeric precision of training; Auto picks BF16 on GPUs that support it and FP32 on CPU."""

    AUTO = "Auto"
    BF16 = "BF16"
    FP16 = "FP16"
    FP32 = "FP32"


class Distributed(StrEnum):
    """How several training processes share the work."""

    DDP = "DDP"
    FSDP = "FSDP"


class ValidationMetric(StrEnum):
    """The validation metric that early stopping and best-checkpoint selection watch."""

    LOSS = "Loss"
    ACCURACY = "Accuracy"
    F1 = "F1"


class TolerationOperator(StrEnum):
    """Kubernetes toleration operator."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """Kubernetes taint effect."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Phase(StrEnum):
    """One-word summary of a FineTuneJob, derived from its conditions."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ConditionType(StrEnum):
    """Condition types of a FineTuneJob."""

    ACCEPTED = "Accepted"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    OVERFITTING = "Overfitting"
    DATA_SUFFICIENT = "DataSufficient"
    PROMOTABLE = "Promotable"
    DEPLOYED = "Deployed"


class Mixing(StrEnum):
    """How the training rows of several tasks are mixed in each epoch (multitask)."""

    PROPORTIONAL = "Proportional"
    WEIGHTED = "Weighted"
    TEMPERATURE = "Temperature"


class DataChangeAction(StrEnum):
    """What a resume does when the data changed since the checkpoint was taken."""

    FAIL = "Fail"
    RESTART = "Restart"


class CheckpointUpload(StrEnum):
    """How checkpoints go to spec.output.uri."""

    BACKGROUND = "Background"
    EVERY = "Every"


class RegressionAction(StrEnum):
    """What a retention regression beyond the threshold does to the job."""

    FAIL = "Fail"
    MARK_NOT_PROMOTABLE = "MarkNotPromotable"


class TestMetric(StrEnum):
    """The headline test metrics (``wire.HEADLINE``): their names in status.evaluation.test, and what a promotion
    threshold can bound."""

    __test__ = False  # not a pytest class

    LOSS = "loss"
    PERPLEXITY = "perplexity"
    EXACT_MATCH = "exactMatch"
    ROUGE_L = "rougeL"
    ACCURACY = "accuracy"
    F1 = "f1"
    PASSKEY_ACCURACY = "passkeyAccuracy"


class SearchAlgorithm(StrEnum):
    """How a FineTuneSweep picks its trials."""

    GRID = "Grid"
    RANDOM = "Random"


class ServingEngine(StrEnum):
    """What serves a deployed model."""

    TRANSFORMERS = "Transformers"
    VLLM = "VLLM"


class RopeScaling(StrEnum):
    """How rotary position embeddings are stretched to a longer context."""

    LINEAR = "Linear"
    DYNAMIC = "Dynamic"
    YARN = "YaRN"


class ConditionStatus(StrEnum):
    """Kubernetes condition status."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
