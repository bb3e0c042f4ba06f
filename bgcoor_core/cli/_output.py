"""Console helpers: rich output on stdout, one-line errors on stderr, logging for workers.

Everything shown comes through :func:`clean` (or :func:`cell`, :func:`json_text`,
:func:`clean_json`): task errors, arguments, ids and names are data anyone who can enqueue
wrote, and a raw ``ESC [`` or ``CR`` in them would drive the operator's terminal (recolour,
overwrite a line, retitle the window). Control characters are shown escaped instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from .._text import escape_unprintable

__all__ = [
    "CliError",
    "cell",
    "clean",
    "clean_json",
    "err_console",
    "json_text",
    "logging_to_stderr",
    "one_line",
    "out_console",
    "print_error",
    "print_json",
    "quiet_logging",
    "timestamp",
]


class CliError(Exception):
    """An error the command line reports as one line; ``exit_code`` 2 means bad usage."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


#: Width of a console that is not a terminal (a pipe, a file): wide enough that no table
#: row is wrapped or truncated, so ``bgcoor dlq list | grep mytask`` finds whole rows.
PIPE_WIDTH = 100_000


def out_console() -> Console:
    """Console for results (stdout). Made per use, so it follows redirected streams.

    On a terminal it has the terminal's width; otherwise :data:`PIPE_WIDTH`, whatever
    ``COLUMNS`` says, so rows stay whole for ``grep`` and scripts."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=PIPE_WIDTH)
    return console


def err_console() -> Console:
    """Console for errors, progress and spinners (stderr)."""
    return Console(stderr=True, highlight=False)


def clean(value: object, *, multiline: bool = False) -> str:
    """``str(value)`` safe for a terminal: control and other unprintable characters
    escaped (``\x1b``, ``\r``, ``\u202e``); with ``multiline``, newlines kept."""
    return escape_unprintable(str(value), keep="\n" if multiline else "")


def cell(value: object, style: str = "") -> Text:
    """A table cell (or any rich text) of data: :func:`clean`, never read as markup."""
    return Text(clean(value), style)


def clean_json(text: str) -> str:
    """JSON text with every unprintable character written as a ``\\uXXXX`` escape, so it
    stays valid JSON with the same value (``json`` escapes only ``\\x00``-``\\x1f``; DEL,
    the C1 controls and format characters would reach the terminal raw). Newlines, which
    in JSON text are only indentation, are kept."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\n" else _json_escape(ch) for ch in text)


def _json_escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the basic plane: a UTF-16 surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def one_line(message: str) -> str:
    """``message`` folded onto one line (multi-line messages become ``a; b``)."""
    parts = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(parts) or "(no message)"


def print_error(message: str) -> None:
    """``error: <message>`` on stderr, on one line whatever the terminal width."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(Text.assemble(("error: ", "bold red"), one_line(clean(message, multiline=True))))


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (``--json``): stable keys as given, every
    unprintable character escaped as JSON writes it (:func:`clean_json`)."""
    typer.echo(clean_json(json.dumps(data, ensure_ascii=False, indent=2, default=str)))


def json_text(value: Any) -> str:
    """A JSON value as compact text (what ``enqueue --wait`` prints), terminal-safe."""
    return clean_json(json.dumps(value, ensure_ascii=False, default=str))


def timestamp(value: datetime | float | None) -> str:
    """A datetime or Unix time as ``2025-01-31T12:00:00Z`` (UTC, to the second), or ``-``."""
    if value is None:
        return "-"
    if not isinstance(value, datetime):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CleanRichHandler(RichHandler):
    """A rich log handler that shows messages (a task's error, a dead-letter reason) and
    tracebacks with their control characters escaped."""

    def render_message(self, record: logging.LogRecord, message: str) -> Any:
        return super().render_message(record, clean(message, multiline=True))


class LineFormatter(logging.Formatter):
    """One record, one line, for logs that are not read on a terminal (a file, journald,
    a container's log collector): ``2025-01-31T12:00:00.123Z INFO bgcoor.executor: ...``
    (ISO-8601, UTC), with newlines and control characters of the message and of any
    traceback escaped (``\\n``, ``\\x1b``), so no record is wrapped or split."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            message += "\n" + self.formatStack(record.stack_info)
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        return f"{when.replace('+00:00', 'Z')} {record.levelname} {record.name}: {clean(message)}"


def stderr_log_handler() -> logging.Handler:
    """Rich, colourful records on a terminal; :class:`LineFormatter` lines otherwise."""
    console = err_console()
    if console.is_terminal:
        return CleanRichHandler(console=console, show_path=False, rich_tracebacks=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    return handler


@contextlib.contextmanager
def logging_to_stderr(level: str) -> Iterator[None]:
    """Show bg-coor's log records at ``level`` and above on stderr (see
    :func:`stderr_log_handler`).

    When the app configured logging itself (the root logger has handlers), only bg-coor's
    own logger level is set; otherwise a handler is added and the root level set, so the
    app's own records show too. Everything is restored afterwards.
    """
    root, ours = logging.getLogger(), logging.getLogger("bgcoor")
    old_root, old_ours = root.level, ours.level
    handler: logging.Handler | None = None
    if not root.handlers:
        handler = stderr_log_handler()
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
