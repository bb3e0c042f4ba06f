"""Task options, declared once.

:class:`TaskDefaults` (the keyword arguments of ``@manager.task(...)``) and
:class:`CallOptions` (those of ``fn.options(...)``) are the declaration: each option's
type, its help text and its range live in its annotation. Everything else reads them:
the decorator and ``.options()`` are typed by them (``Unpack``), :func:`check` validates
any mapping of options against them (the CLI's ``enqueue`` flags, plugins), and
:class:`~bgcoor_core.TaskOptions` holds a task's resolved defaults.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Annotated, Any, Literal, TypedDict, get_args, get_origin, get_type_hints

from pydantic import TypeAdapter, ValidationError

from . import _limits as limits
from ._errors import OutOfRangeError
from ._gates import parse_rate
from ._task import validate_queue_name, validate_task_name


@dataclass(frozen=True, slots=True)
class Spec:
    """What an option means (``help``) and which values it takes (``bounds``, ``check``)."""

    help: str
    bounds: limits.Range | None = None
    check: Callable[[str, Any], Any] | None = None


def _queue(option: str, value: Any) -> Any:
    return validate_queue_name(value)


def _name(option: str, value: Any) -> Any:
    return validate_task_name(value)


def _eta(option: str, value: Any) -> Any:
    return limits.check_eta(option, value)


def _expires(option: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return limits.check_eta(option, value)
    return limits.DELAY.check(option, value)


def _unique_key(option: str, value: Any) -> Any:
    if not value or len(value) > 256 or not value.isprintable():
        raise OutOfRangeError(f"{option}: a unique key is 1 to 256 printable characters")
    return value


def _unique_for(option: str, value: Any) -> Any:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    return limits.TTL.check(option, seconds)


def _rate_limit(option: str, value: Any) -> Any:
    parse_rate(option, value)
    return value


def _limit_key(option: str, value: Any) -> Any:
    if not callable(value):
        raise OutOfRangeError(f"{option}: a callable taking the task's arguments is expected")
    return value


def _headers(option: str, value: Any) -> Any:
    for key, text in value.items():
        if not key or not key.isprintable() or not text.isprintable():
            raise OutOfRangeError(f"{option}: header names and values must be printable text")
    return value


class CommonOptions(TypedDict, total=False):
    """Options a task declares as defaults and a call may override."""

    queue: Annotated[str, Spec("Queue the task is pushed to.", check=_queue)]
    priority: Annotated[
        int, Spec("Higher runs first, on brokers with priorities.", limits.PRIORITY)
    ]
    max_retries: Annotated[int, Spec("Retries after the first attempt.", limits.RETRIES)]
    timeout: Annotated[float, Spec("Seconds one attempt may run.", limits.TIMEOUT)]
    result_ttl: Annotated[float, Spec("Seconds the final record is kept.", limits.TTL)]
    headers: Annotated[dict[str, str], Spec("Metadata carried with the task.", check=_headers)]


#: A process-isolated task's memory cap, in MB (1 MB to 1 TB).
MEMORY_LIMIT = limits.Range(1, 1_048_576, "MB")
#: Tasks of one limit key running at once.
CONCURRENCY_LIMIT = limits.Range(1, limits.MAX_CONCURRENCY, "tasks")


class TaskDefaults(CommonOptions, total=False):
    """The keyword arguments of ``@manager.task(...)``."""

    name: Annotated[str, Spec("The task's name (default: module.function).", check=_name)]
    retry_backoff: Annotated[float, Spec("Base of the retry backoff, seconds.", limits.BACKOFF)]
    retry_backoff_max: Annotated[float, Spec("Cap of the retry backoff, seconds.", limits.BACKOFF)]
    retry_on: Annotated[
        tuple[type[BaseException], ...], Spec("Exceptions that are retried (others fail).")
    ]
    isolation: Annotated[
        Literal["thread", "process"],
        Spec(
            "Where a sync task runs: 'thread' (the worker's thread pool, the default) or "
            "'process' (a child process: a hard timeout, a memory cap)."
        ),
    ]
    memory_limit_mb: Annotated[
        int, Spec("Address space of a process-isolated task's child, in MB.", MEMORY_LIMIT)
    ]
    rate_limit: Annotated[
        str,
        Spec(
            "At most this many starts, across all workers: 'N/s', 'N/m' or 'N/h' (per "
            "limit_key value, with one).",
            check=_rate_limit,
        ),
    ]
    concurrency_limit: Annotated[
        int,
        Spec(
            "At most this many running at once, across all workers (per limit_key value, "
            "with one).",
            CONCURRENCY_LIMIT,
        ),
    ]
    limit_key: Annotated[
        Callable[..., Any],
        Spec(
            "Called with a call's arguments; its value names the bucket rate_limit and "
            "concurrency_limit apply to.",
            check=_limit_key,
        ),
    ]
    #: Options declared by plugins (``bgcoor_register_task_options``), for typed code;
    #: they may also be passed as keyword arguments of their own.
    extra: Annotated[dict[str, Any], Spec("Plugin task options by name.")]


class CallOptions(CommonOptions, total=False):
    """The keyword arguments of ``fn.options(...)``: one call's overrides."""

    delay: Annotated[float, Spec("Seconds from now before it may run.", limits.DELAY)]
    eta: Annotated[datetime, Spec("When it may run (timezone-aware).", check=_eta)]
    expires: Annotated[
        datetime | float,
        Spec("Never run if not started by then (datetime, or seconds).", check=_expires),
    ]
    unique_key: Annotated[
        str,
        Spec(
            "At most one task with this key at once: an enqueue while it is held returns "
            "the holder.",
            check=_unique_key,
        ),
    ]
    unique_for: Annotated[
        timedelta | float,
        Spec(
            "With unique_key: the key stays held this long after the enqueue (seconds, "
            "or a timedelta), even once the task ended.",
            check=_unique_for,
        ),
    ]


Kind = Literal["task", "call"]


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    kind: Any  # the plain type, without the Annotated metadata
    spec: Spec
    adapter: TypeAdapter[Any]


@cache
def options(kind: Kind) -> dict[str, Option]:
    """The declared options of the decorator (``"task"``) or of one call (``"call"``)."""
    declared = TaskDefaults if kind == "task" else CallOptions
    found: dict[str, Option] = {}
    for name, hint in get_type_hints(declared, include_extras=True).items():
        plain, spec = _unpack(hint)
        adapter: TypeAdapter[Any] = TypeAdapter(plain)
        found[name] = Option(name, plain, spec, adapter)
    return found


def _unpack(hint: Any) -> tuple[Any, Spec]:
    if get_origin(hint) is Annotated:
        plain, *metadata = get_args(hint)
        spec = next(m for m in metadata if isinstance(m, Spec))
        return plain, spec
    raise TypeError(f"option annotation {hint!r} lacks a Spec")  # a declaration bug


def check(kind: Kind, given: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """``given`` validated against the declaration: an unknown option names the closest
    known one; a value of the wrong type or out of range (every number option has a
    finite range: ``inf`` and ``nan`` are out) names the option and its range.
    Returns the values as validated (``None`` means "not given" and is dropped)."""
    known = options(kind)
    checked: dict[str, Any] = {}
    for name, value in given.items():
        if value is None:
            continue
        option = known.get(name)
        if option is None:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise OutOfRangeError(f"{where}unknown option {name!r}{hint}")
        checked[name] = _value(option, value, f"{where}{name}")
    return checked


def _value(option: Option, value: Any, label: str) -> Any:
    if option.kind is not tuple[type[BaseException], ...]:  # classes: checked below
        try:
            value = option.adapter.validate_python(value, strict=isinstance(value, bool))
        except ValidationError as exc:
            problem = exc.errors(include_url=False, include_input=False)[0]["msg"]
            raise OutOfRangeError(f"{label}: {problem}") from None
    elif not all(isinstance(c, type) and issubclass(c, BaseException) for c in value):
        raise OutOfRangeError(f"{label}: a tuple of exception classes is expected")
    if option.spec.bounds is not None:
        option.spec.bounds.check(label, value)
    if option.spec.check is not None:
        value = option.spec.check(label, value)
    return value
