"""Options shared by several commands, and their validation (bad values exit with 2)."""

from __future__ import annotations

from typing import Annotated

import typer

from .._errors import InvalidNameError
from .._task import validate_queue_name


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
