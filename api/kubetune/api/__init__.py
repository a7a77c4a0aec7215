"""kubetune's FineTuneJob API (kubetune.dev/v1alpha1), shared by the operator and the trainer.

Pure pydantic: importing it pulls in neither Kubernetes clients nor torch.
"""

from .enums import (
    ConditionStatus,
    ConditionType,
    DataFormat,
    DatasetUsage,
    Distributed,
    FileFormat,
    MethodType,
    Phase,
    Precision,
    Scheduler,
    TaskType,
    ValidationMetric,
)
from .errors import describe
from .reasons import Reason, message
from .spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    FineTuneJob,
    FineTuneJobSpec,
    parse_job,
    parse_spec,
)
from .status import Condition, FineTuneJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "DataFormat",
    "DatasetUsage",
    "Distributed",
    "FileFormat",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "MethodType",
    "Phase",
    "Precision",
    "Reason",
    "Scheduler",
    "TaskType",
    "ValidationMetric",
    "describe",
    "message",
    "parse_job",
    "parse_spec",
]
