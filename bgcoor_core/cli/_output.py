"""Console helpers: rich output on stdout, one-line errors on stderr, logging for workers."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.text import Text

__all__ = [
    "CliError",
    "err_console",
    "json_text",
    "logging_to_stderr",
    "one_line",
    "out_console",
    "print_error",
    "quiet_logging",
    "timestamp",
]


class CliError(Exception):
    """An error the command line reports as one line; ``exit_code`` 2 means bad usage."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def out_console() -> Console:
    """Console for results (stdout). Made per use, so it follows redirected streams."""
    return Console(highlight=False)


def err_console() -> Console:
    """Console for errors, progress and spinners (stderr)."""
    return Console(stderr=True, highlight=False)


def one_line(message: str) -> str:
    """``message`` folded onto one line (multi-line messages become ``a; b``)."""
    parts = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(parts) or "(no message)"


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, on one line whatever the terminal width."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(Text.assemble(("error: ", "bold red"), one_line(message)))


def json_text(value: Any) -> str:
    """A JSON value as compact text (what ``enqueue --wait`` prints)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def timestamp(value: datetime | float | None) -> str:
    """A datetime or Unix time as ``2025-01-31T12:00:00Z`` (UTC, to the second), or ``-``."""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextlib.contextmanager
def logging_to_stderr(level: str) -> Iterator[None]:
    """Show bg-coor's log records at ``level`` and above on stderr (rich).

    When the app configured logging itself (the root logger has handlers), only bg-coor's
    own logger level is set; otherwise a handler is added and the root level set, so the
    app's own records show too. Everything is restored afterwards.
    """
    from rich.logging import RichHandler

    root, ours = logging.getLogger(), logging.getLogger("bgcoor")
    old_root, old_ours = root.level, ours.level
    handler: logging.Handler | None = None
    if not root.handlers:
        handler = RichHandler(console=err_console(), show_path=False, rich_tracebacks=False)
        root.addHandler(handler)
        root.setLevel(level.upper())
    ours.setLevel(level.upper())
    try:
        yield
    finally:
        ours.setLevel(old_ours)
        if handler is not None:
            root.removeHandler(handler)
            root.setLevel(old_root)


@contextlib.contextmanager
def quiet_logging(logger: str = "bgcoor", level: int = logging.ERROR) -> Iterator[None]:
    """Silence ``logger`` below ``level`` for the duration (the demo dead-letters on purpose)."""
    log = logging.getLogger(logger)
    old = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(old)
