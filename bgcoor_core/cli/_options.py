"""Options shared by several commands, and their validation (bad values exit with 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

import typer

from .. import _limits as limits
from .._errors import InvalidNameError
from .._limits import Range
from .._task import validate_queue_name, validate_task_id

N = TypeVar("N", int, float)


def in_range(bounds: Range) -> Callable[[N | None], N | None]:
    """Typer callback: a number within ``bounds`` (:mod:`bgcoor_core._limits`), or a usage
    error naming the range; ``inf`` and ``nan`` never pass (Click's own ranges let ``nan``
    through, as it compares false both ways)."""

    def check(value: N | None) -> N | None:
        if value is None or value in bounds:
            return value
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        raise typer.BadParameter(f"{shown} is out of range: use {bounds.describe()}")

    return check


def check_task_ids(value: list[str] | None) -> list[str] | None:
    """Typer callback: task ids as every backend accepts them (no empty id, no controls)."""
    for task_id in value or ():
        try:
            validate_task_id(task_id)
        except InvalidNameError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


def check_task_id(value: str) -> str:
    check_task_ids([value])
    return value


def check_queue(value: str | None) -> str | None:
    """Typer callback: a valid queue name, or a usage error."""
    if value is None:
        return None
    try:
        return validate_queue_name(value)
    except InvalidNameError as exc:
        raise typer.BadParameter(str(exc)) from None


def check_queue_list(value: str | None) -> str | None:
    """Typer callback for ``--queues a,b``: every name valid and at least one given."""
    if value is None:
        return None
    names = split_queues(value)
    if not names:
        raise typer.BadParameter("give at least one queue name, e.g. --queues default,emails")
    for name in names:
        check_queue(name)
    return value


def split_queues(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


AppOption = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-A",
        metavar="APP",
        help="Use this TaskManager's broker and storage (module:attribute or module); "
        "default: a TaskManager built from the BGCOOR_* settings.",
    ),
]

AppArgument = Annotated[
    str,
    typer.Argument(
        metavar="APP",
        help="Your TaskManager as module:attribute, or module (attribute 'manager' or 'app').",
        show_default=False,
    ),
]

QueueOption = Annotated[
    str,
    typer.Option("--queue", "-q", help="Queue name.", callback=check_queue),
]

LimitOption = Annotated[
    int,
    typer.Option(
        "--limit",
        "-n",
        callback=in_range(limits.LISTING),
        help=f"Show at most N ({limits.LISTING.describe()}).",
    ),
]

JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print JSON (stable keys, secrets redacted) instead of tables."),
]


def check_optional_task_id(value: str | None) -> str | None:
    return None if value is None else check_task_id(value)
