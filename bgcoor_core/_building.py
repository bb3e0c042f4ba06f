"""Building a call's :class:`Task`: its payload checked against the task's signature, its
options over the task's defaults over the settings."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ._errors import OutOfRangeError, PayloadError
from ._gates import GATE_HEADER, Gate, gate_for, rate_of
from ._handlers import FunctionHandler, split_payload
from ._task import Task, TaskStatus
from ._task_registry import RegisteredTask
from ._unique import UNIQUE_HEADER, UNIQUE_UNTIL_HEADER

if TYPE_CHECKING:
    from ._settings import Settings


def payload_of(
    task: RegisteredTask, args: Sequence[Any], kwargs: dict[str, Any], *, partial: bool = False
) -> Any:
    """A call's payload: a function task's arguments checked against its signature, or a
    handler object's one argument as it is. ``partial``: arguments may be missing (a
    signature, completed later by its workflow or checked whole by ``add_schedule``)."""
    if isinstance(task.handler, FunctionHandler):
        return task.handler.encode_arguments(args, kwargs, partial=partial)
    if len(args) == 1 and not kwargs:
        return args[0]
    raise PayloadError(
        f"task {task.name!r} is a handler object: pass exactly one argument, its payload"
    )


def check_complete(
    task: RegisteredTask,
    payload: Any,
    *,
    leading: int = 0,
    also: dict[str, Any] | None = None,
) -> None:
    """Refuse (:class:`PayloadError`) a signature's payload that would not bind once
    ``leading`` positional values (its parents' results) are put first and ``also`` added."""
    if not isinstance(task.handler, FunctionHandler):
        return
    args, kwargs = split_payload(task.name, payload)
    task.handler.bind([None] * leading + list(args), {**(also or {}), **kwargs})


def _gate(task: RegisteredTask, payload: Any) -> Gate:
    opts = task.options
    if opts.limit_key is None:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
    elif isinstance(task.handler, FunctionHandler):
        args, kwargs = split_payload(task.name, payload)
    else:
        args, kwargs = [payload], {}
    rate = None if opts.rate_limit is None else rate_of(opts.rate_limit)
    gate = gate_for(task.name, rate, opts.concurrency_limit, opts.limit_key, args, kwargs)
    assert gate is not None  # the task has a limit
    return gate


def _first(*values: int | None) -> int:
    for value in values:
        if value is not None:
            return value
    raise AssertionError("unreachable: settings always provide a default")


def build(task: RegisteredTask, payload: Any, call: dict[str, Any], settings: Settings) -> Task:
    """The :class:`Task` of one call: its options (already checked) over the task's
    defaults over the settings."""
    opts = task.options
    now = datetime.now(UTC)
    eta = call.get("eta")
    if "delay" in call:
        eta = now + timedelta(seconds=call["delay"])
    expires = call.get("expires")
    if expires is not None and not isinstance(expires, datetime):
        expires = now + timedelta(seconds=expires)
    headers = {**opts.headers, **call["headers"]} if "headers" in call else dict(opts.headers)
    if "unique_key" in call:
        headers[UNIQUE_HEADER] = call["unique_key"]
        if "unique_for" in call:
            headers[UNIQUE_UNTIL_HEADER] = repr(now.timestamp() + call["unique_for"])
    elif "unique_for" in call:
        raise OutOfRangeError(f"task {task.name!r}: unique_for needs a unique_key")
    if opts.rate_limit is not None or opts.concurrency_limit is not None:
        headers[GATE_HEADER] = _gate(task, payload).encode()
    return Task.prechecked(
        name=task.name,
        payload=payload,
        queue=call.get("queue", opts.queue),
        priority=call.get("priority", opts.priority),
        eta=eta,
        max_retries=_first(call.get("max_retries"), opts.max_retries, settings.max_retries),
        timeout=call.get("timeout", opts.timeout),
        result_ttl=call.get("result_ttl", opts.result_ttl),
        expires=expires,
        headers=headers,
        status=TaskStatus.SCHEDULED if eta is not None else TaskStatus.PENDING,
    )
