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
from ._context import CurrentTask, current_task
from ._errors import (
    BgcoorError,
    CapabilityError,
    ConfigurationError,
    CorruptRecordError,
    DecodeError,
    DuplicateSchemeError,
    DuplicateTaskError,
    EnqueueUncertainError,
    InvalidNameError,
    InvalidTransitionError,
    NonRetryableError,
    OutOfRangeError,
    PayloadError,
    PayloadTooLargeError,
    PluginError,
    PluginLoadError,
    ResultTimeoutError,
    Retry,
    SettingsError,
    StaleLeaseError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskRegistrationError,
    TaskTimeoutError,
    UnknownSchemeError,
    UnknownTaskError,
)
from ._executor import Executor
from ._extensions import OptionRegistry, ServiceRegistry, WorkerOptionRegistry
from ._handlers import Handler
from ._manager import TaskCall, TaskFunction, TaskHandle, TaskManager
from ._plugins import PluginHost, build_plugin_host
from ._pool import WorkerPool
from ._settings import Settings, load_settings
from ._storage import Storage, check_write
from ._task import ALLOWED_TRANSITIONS, FROM_UNKNOWN_STATUS, Task, TaskStatus
from ._task_registry import TaskOptions, TaskRegistry
from ._wiring import Backends
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
    "Handler",
    "InvalidNameError",
    "InvalidTransitionError",
    "MemoryBroker",
    "MemoryStorage",
    "Message",
    "Migratable",
    "NonRetryableError",
    "OptionRegistry",
    "OutOfRangeError",
    "PayloadError",
    "PayloadTooLargeError",
    "PluginError",
    "PluginHost",
    "PluginLoadError",
    "QueueStats",
    "Reservation",
    "ResultTimeoutError",
    "Retry",
    "Serializer",
    "SerializerRegistry",
    "ServiceRegistry",
    "Settings",
    "SettingsError",
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
    "UnknownSchemeError",
    "UnknownTaskError",
    "WorkerOptionRegistry",
    "WorkerPool",
    "__version__",
    "build_plugin_host",
    "check_write",
    "current_task",
    "hookimpl",
    "load_settings",
]
