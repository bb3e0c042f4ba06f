"""A task signature: a task and its arguments, not yet enqueued (``export.s(bucket="b1")``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._errors import InvalidScheduleError

#: Call options that pin one moment: meaningless for a task enqueued again and again.
_ONE_OFF = ("delay", "eta")


@dataclass(frozen=True, slots=True)
class Signature:
    """Task ``task`` with its encoded ``payload`` (checked against the task's signature
    when made) and call ``options`` (checked too). Build with ``fn.s(...)``, ``fn.si(...)``
    or ``fn.options(...).s(...)``."""

    task: str
    payload: Any
    options: dict[str, Any] = field(default_factory=dict)
    #: Made by ``.si()``: in a workflow it waits for its parents but takes none of their
    #: results as arguments.
    immutable: bool = False
    #: The manager of the task it was made from: where ``chain(...).enqueue()`` submits.
    #: Not part of the signature's data (not compared, not serialised).
    manager: Any = field(default=None, compare=False, repr=False)

    def repeatable_options(self) -> dict[str, Any]:
        """The options as a schedule stores them (JSON-ready); refuses one-off ones."""
        for name in _ONE_OFF:
            if name in self.options:
                raise InvalidScheduleError(
                    f"task {self.task!r}: option {name!r} cannot be part of a schedule "
                    "(every tick enqueues at its own time)"
                )
        if "unique_key" in self.options or "unique_for" in self.options:
            raise InvalidScheduleError(
                f"task {self.task!r}: unique_key cannot be part of a schedule (each tick "
                "fires once already; a tick's task is not deduplicated against others)"
            )
        if isinstance(self.options.get("expires"), datetime):
            raise InvalidScheduleError(
                f"task {self.task!r}: a schedule's expires= must be seconds, not a datetime"
            )
        return dict(self.options)
