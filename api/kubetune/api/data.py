"""Training data: dataset sources, row format and field mapping, cleaning and the train/validation/test split."""

from __future__ import annotations

from pydantic import Field

from .base import ApiModel, Rule
from .enums import DataFormat, DatasetUsage, FileFormat, Mixing, OverLength
from .sources import (
    DNS_LABEL,
    URI_ACCESS_RULE,
    ConfigMapKey,
    HuggingFaceDataset,
    PVCLocation,
    SecretRef,
    Uri,
    credentials_field,
    endpoint_field,
)

SMALL_SPLIT_ROWS = 20
"""A validation or test split with fewer rows than this measures little: the trainer warns (prep report, summary)
and the job's DataSufficient condition turns False."""


class DatasetSource(ApiModel):
    """One dataset file (or directory of files). Exactly one of pvc, uri, configMap or huggingFace is set."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Short name of the dataset, unique in the job; used in reports, metrics and multitask weights.",
    )
    pvc: PVCLocation | None = Field(default=None, description="A file or directory on a PersistentVolumeClaim.")
    uri: Uri | None = Field(default=None, description="A file at a URI with a scheme (s3://, gs://, file://, ...).")
    credentials_secret_ref: SecretRef | None = credentials_field()
    endpoint: str | None = endpoint_field()
    config_map: ConfigMapKey | None = Field(default=None, description="A small dataset inline in a ConfigMap key.")
    hugging_face: HuggingFaceDataset | None = Field(default=None, description="Files of a Hugging Face Hub dataset.")
    file_format: FileFormat | None = Field(
        default=None, description="Encoding of the file; inferred from its extension when unset."
    )
    usage: DatasetUsage = Field(
        default=DatasetUsage.SPLIT,
        description="Split: rows are divided by spec.data.split ratios. Train, Validation, Test: every row "
        "goes to that split (explicit files). General: general-domain rows for spec.forgettingGuard (replay and "
        "the retention evaluation), never part of the task's own splits.",
    )
    weight: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="Relative sampling weight of this dataset's task when several are mixed (see spec.data.mixing).",
    )
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Version label of the dataset (e.g. '2026-11' or a commit), recorded in the manifest and the "
        "model card; continuous tuning points a new job at a newer version.",
    )
    task: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
        description="Task this dataset belongs to (multitask): validation and test metrics are reported per task, "
        "and tasks are mixed by spec.data.mixing. The dataset's name when unset.",
    )

    @property
    def task_name(self) -> str:
        """The task this dataset's rows belong to."""
        return self.task or self.name

    rules = (
        Rule(
            cel="[has(self.pvc), has(self.uri), has(self.configMap), has(self.huggingFace)].filter(x, x).size() == 1",
            message="exactly one of pvc, uri, configMap or huggingFace must be set",
            check=lambda s: [s.pvc, s.uri, s.config_map, s.hugging_face].count(None) == 3,
        ),
        URI_ACCESS_RULE,
    )


class FieldMapping(ApiModel):
    """Names of the columns (or JSON keys) each data format reads."""

    instruction: str = Field(default="instruction", min_length=1, max_length=253, description="Instruction column.")
    input: str = Field(default="input", min_length=1, max_length=253, description="Optional extra input column.")
    response: str = Field(default="output", min_length=1, max_length=253, description="Expected response column.")
    system: str = Field(default="system", min_length=1, max_length=253, description="Optional system prompt column.")
    messages: str = Field(
        default="messages",
        min_length=1,
        max_length=253,
        description="Chat column: a list of {role, content} messages.",
    )
    text: str = Field(
        default="text", min_length=1, max_length=253, description="Text column (Completion, Classification)."
    )
    label: str = Field(default="label", min_length=1, max_length=253, description="Label column (Classification).")


class Cleaning(ApiModel):
    """Row cleaning applied before the split; every dropped row is counted by reason in the prep report."""

    normalize_whitespace: bool = Field(
        default=True, description="Collapse runs of spaces and strip leading/trailing whitespace."
    )
    deduplicate: bool = Field(default=True, description="Drop exact duplicates of the normalised text.")
    min_tokens: int = Field(default=1, ge=0, le=1_000_000, description="Drop rows with fewer tokens than this.")
    over_length: OverLength = Field(
        default=OverLength.TRUNCATE,
        description="What to do with rows longer than spec.training.maxSeqLength tokens.",
    )
    drop_test_overlap: bool = Field(
        default=True, description="Drop validation and test rows whose text also appears in the training split."
    )
    allow_multiline: bool = Field(
        default=False,
        description="Keep CSV rows with a quoted field that spans lines (dropped as multilineField by default: "
        "an unbalanced quote makes one row of two).",
    )


class Split(ApiModel):
    """Seeded random split of the rows of datasets whose usage is Split."""

    validation_ratio: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Share of rows for validation; 0.1 when unset and no dataset has usage Validation.",
    )
    test_ratio: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Share of rows for the test set; 0.1 when unset and no dataset has usage Test.",
    )
    seed: int = Field(default=42, ge=0, le=2**31 - 1, description="Seed of the shuffle before splitting.")

    rules = (
        Rule(
            cel="(has(self.validationRatio) ? self.validationRatio : 0.0) + "
            "(has(self.testRatio) ? self.testRatio : 0.0) < 0.9",
            message="validationRatio + testRatio must be below 0.9, leaving rows to train on",
            check=lambda s: (s.validation_ratio or 0.0) + (s.test_ratio or 0.0) < 0.9,
        ),
    )


class MixingSpec(ApiModel):
    """How tasks share each epoch's training rows; an epoch keeps the total number of training rows.

    Proportional: each task's share is weight x its rows (all weights 1: every row once, as without mixing).
    Weighted: shares follow the weights alone (a small task is oversampled, a large one undersampled).
    Temperature: shares follow (weight x rows)^(1/temperature); 1 is Proportional, larger flattens towards equal.
    """

    strategy: Mixing = Field(default=Mixing.PROPORTIONAL, description="Proportional, Weighted or Temperature.")
    temperature: float = Field(
        default=2.0, ge=1, le=100, description="Sampling temperature (strategy Temperature only)."
    )


class Augmentation(ApiModel):
    """Opt-in augmentation of scarce training data: seeded word-level noise on the inputs (never on the
    trained-on answers), added as extra copies of the training rows. The prep report counts what was added."""

    copies: int = Field(default=1, ge=1, le=16, description="Augmented copies added per training row.")
    word_dropout: float = Field(default=0.1, ge=0, lt=1, description="Probability that a word is dropped.")
    word_swap: float = Field(default=0.1, ge=0, lt=1, description="Probability that a word swaps with the next one.")
    token_noise: float = Field(
        default=0.0, ge=0, lt=1, description="Probability that a word is replaced by a random training-data word."
    )
    seed: int = Field(default=1234, ge=0, le=2**31 - 1, description="Seed of the noise.")

    rules = (
        Rule(
            cel="self.wordDropout + self.wordSwap + self.tokenNoise > 0.0",
            message="at least one of wordDropout, wordSwap and tokenNoise must be above 0",
            check=lambda s: s.word_dropout + s.word_swap + s.token_noise > 0,
        ),
    )


def _has_usage(data: Data, usage: DatasetUsage) -> bool:
    return any(d.usage == usage for d in data.datasets)


class Data(ApiModel):
    """Datasets and how their rows become training examples."""

    datasets: list[DatasetSource] = Field(
        min_length=1, max_length=32, description="Dataset files; several are mixed by weight (multitask)."
    )
    format: DataFormat = Field(default=DataFormat.INSTRUCTION, description="Shape of each row.")
    fields: FieldMapping = Field(default_factory=FieldMapping, description="Column names each format reads.")
    prompt_template: str | None = Field(
        default=None,
        max_length=8192,
        description="Instruction prompt with {instruction}, {input} and {system} placeholders; an Alpaca-style "
        "'### Instruction:' / '### Response:' prompt when unset.",
    )
    use_chat_template: bool = Field(
        default=False,
        description="Instruction rows: render the instruction (and input) as the user turn, the system field as "
        "the system turn and the response as the assistant turn with the model's own chat template, instead of "
        "a text prompt. Needs a tokenizer with a chat template.",
    )
    cleaning: Cleaning = Field(default_factory=Cleaning, description="Row cleaning before the split.")
    split: Split = Field(default_factory=Split, description="Train/validation/test split of Split datasets.")
    mixing: MixingSpec = Field(default_factory=MixingSpec, description="How tasks are mixed (multitask).")
    augmentation: Augmentation | None = Field(
        default=None, description="Augmentation of the training rows (scarce data); off when unset."
    )
    cache: PVCLocation | None = Field(
        default=None,
        description="A directory on a claim where the prepared data (tokenized, split, memory-mapped Arrow) is kept "
        "and shared by every job that prepares the same data the same way (sweep trials, continuous tuning); "
        "<output>/.prepared when unset (scratch space for an output.uri).",
    )

    rules = (
        Rule(
            cel="self.datasets.all(a, self.datasets.exists_one(b, b.name == a.name))",
            message="datasets[].name must be unique",
            check=lambda s: len({d.name for d in s.datasets}) == len(s.datasets),
        ),
        Rule(
            cel="!self.datasets.exists(d, d.usage == 'Validation') || !has(self.split.validationRatio)",
            message="split.validationRatio must be unset when a dataset has usage Validation",
            check=lambda s: not _has_usage(s, DatasetUsage.VALIDATION) or s.split.validation_ratio is None,
        ),
        Rule(
            cel="!self.datasets.exists(d, d.usage == 'Test') || !has(self.split.testRatio)",
            message="split.testRatio must be unset when a dataset has usage Test",
            check=lambda s: not _has_usage(s, DatasetUsage.TEST) or s.split.test_ratio is None,
        ),
        Rule(
            cel="self.datasets.exists(d, d.usage == 'Split' || d.usage == 'Train')",
            message="datasets must include at least one with usage Split or Train",
            check=lambda s: _has_usage(s, DatasetUsage.SPLIT) or _has_usage(s, DatasetUsage.TRAIN),
        ),
        Rule(
            cel="!has(self.useChatTemplate) || !self.useChatTemplate || ((!has(self.format) || "
            "self.format == 'Instruction') && !has(self.promptTemplate))",
            message="useChatTemplate needs format Instruction and no promptTemplate",
            check=lambda s: (
                not s.use_chat_template or (s.format == DataFormat.INSTRUCTION and s.prompt_template is None)
            ),
        ),
    )

    def ratios(self) -> tuple[float, float]:
        """Effective (validation, test) ratios after the documented defaults."""
        val = self.split.validation_ratio
        test = self.split.test_ratio
        if val is None:
            val = 0.0 if _has_usage(self, DatasetUsage.VALIDATION) else 0.1
        if test is None:
            test = 0.0 if _has_usage(self, DatasetUsage.TEST) else 0.1
        return val, test
