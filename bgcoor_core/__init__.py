"""bg-coor: background tasks with pluggable brokers and storages, delivered at least once."""

from ._backend_registry import BackendContext, BrokerRegistry, SerializerRegistry, StorageRegistry
from ._broker import (
    AtomicCompletion,
    AtomicEnqueue,
    Broker,
    Capability,
    DeadLetter,
    Message,
    Migratable,
    QueueStats,
    Reservation,
)
from ._codec import Codec, Serializer
from ._composition import Workflow, chain, chord, group
from ._context import CurrentTask, current_task
from ._errors import (
    BgcoorError,
    CapabilityError,
    ChildError,
    ConfigurationError,
    CorruptRecordError,
    DecodeError,
    DuplicateSchemeError,
    DuplicateTaskError,
    EnqueueUncertainError,
    InvalidNameError,
    InvalidScheduleError,
    InvalidTransitionError,
    InvalidWorkflowError,
    MemoryLimitError,
    NonRetryableError,
    OutOfRangeError,
    PayloadError,
    PayloadTooLargeError,
    PluginError,
    PluginLoadError,
    QueueFullError,
    ResultTimeoutError,
    Retry,
    SettingsError,
    StaleLeaseError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskRegistrationError,
    TaskTimeoutError,
    UnknownScheduleError,
    UnknownSchemeError,
    UnknownTaskError,
    WorkerLostError,
    WorkflowFailedError,
)
from ._executor import Executor
from ._extensions import OptionRegistry, ServiceRegistry, WorkerOptionRegistry
from ._failures import Failure, FailureCause
from ._handlers import Handler
from ._manager import TaskCall, TaskFunction, TaskHandle, TaskManager
from ._periodic import ScheduleInfo
from ._plugins import PluginHost, build_plugin_host
from ._pool import WorkerPool
from ._scheduler import Scheduler
from ._schedules import (
    Catchup,
    Fire,
    FireOutcome,
    Overlap,
    ScheduleDefinition,
    ScheduleEntry,
    ScheduleState,
    ScheduleStore,
)
from ._settings import Settings, load_settings
from ._signature import Signature
from ._storage import Storage, check_write
from ._task import ALLOWED_TRANSITIONS, FROM_UNKNOWN_STATUS, Task, TaskStatus
from ._task_registry import TaskOptions, TaskRegistry
from ._timetable import Schedule
from ._unique import UniqueStore
from ._wiring import Backends
from ._workflow_handles import WorkflowHandle
from ._workflows import WorkflowStatus, WorkflowStore
from .backends.memory import MemoryBroker, MemoryStorage
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "ALLOWED_TRANSITIONS",
    "FROM_UNKNOWN_STATUS",
    "AtomicCompletion",
    "AtomicEnqueue",
    "BackendContext",
    "Backends",
    "BgcoorError",
    "Broker",
    "BrokerRegistry",
    "Capability",
    "CapabilityError",
    "Catchup",
    "ChildError",
    "Codec",
    "ConfigurationError",
    "CorruptRecordError",
    "CurrentTask",
    "DeadLetter",
    "DecodeError",
    "DuplicateSchemeError",
    "DuplicateTaskError",
    "EnqueueUncertainError",
    "Executor",
    "Failure",
    "FailureCause",
    "Fire",
    "FireOutcome",
    "Handler",
    "InvalidNameError",
    "InvalidScheduleError",
    "InvalidTransitionError",
    "InvalidWorkflowError",
    "MemoryBroker",
    "MemoryLimitError",
    "MemoryStorage",
    "Message",
    "Migratable",
    "NonRetryableError",
    "OptionRegistry",
    "OutOfRangeError",
    "Overlap",
    "PayloadError",
    "PayloadTooLargeError",
    "PluginError",
    "PluginHost",
    "PluginLoadError",
    "QueueFullError",
    "QueueStats",
    "Reservation",
    "ResultTimeoutError",
    "Retry",
    "Schedule",
    "ScheduleDefinition",
    "ScheduleEntry",
    "ScheduleInfo",
    "ScheduleState",
    "ScheduleStore",
    "Scheduler",
    "Serializer",
    "SerializerRegistry",
    "ServiceRegistry",
    "Settings",
    "SettingsError",
    "Signature",
    "StaleLeaseError",
    "Storage",
    "StorageRegistry",
    "Task",
    "TaskCall",
    "TaskCancelledError",
    "TaskFailedError",
    "TaskFunction",
    "TaskHandle",
    "TaskManager",
    "TaskNotFoundError",
    "TaskOptions",
    "TaskRegistrationError",
    "TaskRegistry",
    "TaskStatus",
    "TaskTimeoutError",
    "UniqueStore",
    "UnknownScheduleError",
    "UnknownSchemeError",
    "UnknownTaskError",
    "WorkerLostError",
    "WorkerOptionRegistry",
    "WorkerPool",
    "Workflow",
    "WorkflowFailedError",
    "WorkflowHandle",
    "WorkflowStatus",
    "WorkflowStore",
    "__version__",
    "build_plugin_host",
    "chain",
    "check_write",
    "chord",
    "current_task",
    "group",
    "hookimpl",
    "load_settings",
]
