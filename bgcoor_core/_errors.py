"""Every error bg-coor raises on purpose derives from :class:`BgcoorError`."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._failures import Failure


class BgcoorError(Exception):
    """Base class of all bg-coor errors."""


class ConfigurationError(BgcoorError):
    """Settings, URLs or options that cannot work together."""


class SettingsError(ConfigurationError):
    """A ``BGCOOR_*`` setting is invalid; the message names the variable."""


class OutOfRangeError(ConfigurationError, ValueError):
    """A task option (at registration or per call) outside its documented range; the
    message names the option and the range (see ``bgcoor_core._limits``)."""


class UnknownSchemeError(ConfigurationError):
    """No plugin provides a backend for the URL scheme."""


class CapabilityError(ConfigurationError):
    """An option needs a capability the chosen backend does not declare."""


class PluginError(BgcoorError):
    """A plugin could not be loaded or conflicts with another."""


class PluginLoadError(PluginError):
    """A plugin failed to import; names the entry point and its distribution."""

    def __init__(self, name: str, distribution: str, cause: BaseException) -> None:
        self.name = name
        self.distribution = distribution
        self.cause = cause
        super().__init__(
            f"plugin {name!r} from distribution {distribution!r} failed to load: "
            f"{type(cause).__name__}: {cause}"
        )


class DuplicateSchemeError(PluginError):
    """Two plugins claim the same URL scheme."""


class TaskRegistrationError(BgcoorError):
    """A task name is invalid or registered twice."""


class UnknownTaskError(BgcoorError, LookupError):
    """No handler is registered under the name."""

    def __init__(
        self, name: str, known: list[str] | None = None, suggestions: list[str] | None = None
    ) -> None:
        self.name = name
        self.suggestions = list(suggestions or ())
        if self.suggestions:
            hint = "; did you mean " + " or ".join(map(repr, self.suggestions)) + "?"
        else:
            hint = f"; registered tasks: {', '.join(sorted(known))}" if known else ""
        super().__init__(f"unknown task {name!r}{hint}")


class TaskNotFoundError(BgcoorError, LookupError):
    """No record exists (or it expired) for the task id."""


class PayloadError(BgcoorError, ValueError):
    """A payload or result cannot be serialised, or does not fit the task's signature."""


class PayloadTooLargeError(PayloadError):
    """An encoded task is larger than ``max_payload_bytes``."""


class InvalidScheduleError(ConfigurationError, ValueError):
    """A schedule that cannot work: a bad cron expression, an unknown time zone, a bad
    interval or policy; the message names it."""


class InvalidWorkflowError(BgcoorError, ValueError):
    """A workflow that cannot run: a cycle, an unknown task, a malformed graph; the message
    names the node."""


class UnknownScheduleError(BgcoorError, LookupError):
    """No schedule with that id is stored."""


class InvalidNameError(BgcoorError, ValueError):
    """A queue or task name outside the allowed character set or length."""


class DecodeError(BgcoorError):
    """A stored message or record cannot be decoded into a task."""


class CorruptRecordError(DecodeError):
    """A stored record (or a message's bookkeeping) was written by something else and cannot
    be read: an unknown status, a counter that is not a number, text that is not UTF-8.

    It costs that one task: a worker dead-letters it with this error's text as the reason
    and overwrites the record as ``dead``; every other task keeps flowing.
    """


class InvalidTransitionError(BgcoorError):
    """A status change that the task life cycle does not allow."""


class StaleLeaseError(BgcoorError):
    """The lease behind a reservation expired and the task was (or may be) delivered again.

    Raised for ack, nack, extend, dead-letter and outcome writes made with a lease token
    that is no longer current, so a paused worker cannot overwrite a newer attempt.
    """


class TaskFailedError(BgcoorError):
    """Raised by ``TaskHandle.result()`` when the task ended in ``failed`` or ``dead``.

    ``error`` is ``"Type: message"``, ``traceback`` the worker's formatted traceback, and
    ``failure`` the structured :class:`~bgcoor_core.Failure` (type, module, message,
    traceback, causes; ``None`` for a record without one). When the original exception's
    class can be found, the error raised is also an instance of it (see
    ``bgcoor_core._failures.failed_error``): ``except ValueError`` catches it too.
    """

    def __init__(
        self,
        task_id: str,
        status: str,
        error: str | None,
        traceback: str | None,
        failure: Failure | None = None,
    ) -> None:
        self.task_id = task_id
        self.status = status
        self.error = error
        self.traceback = traceback
        self.failure = failure
        super().__init__(failed_message(task_id, status, error))

    def __reduce__(self) -> tuple[Any, ...]:
        fields = (self.task_id, self.status, self.error, self.traceback, self.failure)
        return type(self), fields, self.__dict__


def failed_message(task_id: str, status: str, error: str | None) -> str:
    """A :class:`TaskFailedError`'s text: ``task ID ended STATUS: ERROR``."""
    return f"task {task_id} ended {status}: {error}"


class WorkflowFailedError(TaskFailedError):
    """Raised by ``WorkflowHandle.result()`` when the workflow failed; ``task_id`` is the
    workflow's id and ``error`` names the member that failed it."""

    def __init__(self, workflow_id: str, error: str | None) -> None:
        super().__init__(workflow_id, "failed", error, None)
        self.args = (f"workflow {workflow_id} failed: {error}",)

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.task_id, self.error), self.__dict__


class TaskCancelledError(BgcoorError):
    """Raised by ``TaskHandle.result()`` when the task was cancelled."""


class ResultTimeoutError(BgcoorError, TimeoutError):
    """The task did not reach a final state within the timeout."""


class NonRetryableError(BgcoorError):
    """Raise from a task to fail it at once, without retries."""


class Retry(BgcoorError):
    """Raise from a task to have it retried later: ``raise Retry(after=timedelta(seconds=30))``.

    It counts as an attempt, so ``max_retries`` still bounds it (past it the task is
    dead-lettered). Without ``after`` the task's usual backoff applies.
    """

    def __init__(self, reason: str = "", *, after: float | timedelta | None = None) -> None:
        seconds = after.total_seconds() if isinstance(after, timedelta) else after
        if seconds is not None and not (0 <= seconds <= 10 * 365 * 86_400.0):
            raise ValueError(f"Retry(after=...) must be 0 to 10 years, got {after!r}")
        self.after = None if seconds is None else float(seconds)
        when = "" if seconds is None else f" in {seconds:g}s"
        super().__init__(f"retry requested{when}" + (f": {reason}" if reason else ""))


class TaskTimeoutError(BgcoorError, TimeoutError):
    """A task ran longer than its ``timeout``."""


class DuplicateTaskError(BgcoorError):
    """A task with this id is already waiting or reserved in the broker."""


class EnqueueUncertainError(BgcoorError, ConnectionError):
    """An enqueue failed mid-call, retries included, so it may or may not have happened.

    ``task_ids`` are the ids it tried: submitting the same tasks again (same ids) is safe,
    as a task already stored is recognised, not enqueued twice.
    """

    def __init__(self, task_ids: list[str], cause: BaseException) -> None:
        self.task_ids = task_ids
        shown = ", ".join(task_ids[:3]) + (
            f" (+{len(task_ids) - 3} more)" if len(task_ids) > 3 else ""
        )
        super().__init__(
            f"enqueue of task(s) {shown} may or may not have happened: "
            f"{type(cause).__name__}: {cause}; submit the same task(s) again to find out"
        )


class WorkerLostError(BgcoorError):
    """The child process running a task died: killed by a signal (a segfault, the
    out-of-memory killer) or exited without answering. A kill counts toward
    ``BGCOOR_MAX_WORKER_LOST`` like a lost worker (no retry used), an exit is retried like
    any failure; either way a task that kills its child every time ends dead-lettered."""


class MemoryLimitError(BgcoorError, MemoryError):
    """A process-isolated task ran out of memory under its ``memory_limit_mb``."""


class ChildError(BgcoorError):
    """An exception from a child that could not be rebuilt here (its class does not
    pickle); it is re-raised as a subclass named like the original, with its message."""


class QueueFullError(BgcoorError):
    """An enqueue was refused: its queue holds its limit of waiting tasks
    (``BGCOOR_QUEUE_LIMITS``), and the policy is ``reject`` or the wait timed out. Nothing
    of the refused batch was enqueued."""

    def __init__(
        self, queue: str, limit: int, *, waited: float | None = None, too_large: int = 0
    ) -> None:
        self.queue, self.limit, self.waited, self.too_large = queue, limit, waited, too_large
        if too_large:
            problem = f"a batch of {too_large} tasks for queue {queue!r} exceeds its limit"
        else:
            problem = f"queue {queue!r} is full"
        after = "" if waited is None else f" after waiting {waited:g}s"
        super().__init__(f"{problem} (limit {limit} waiting tasks){after}")
