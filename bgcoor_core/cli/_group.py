"""The root command group: turns every error into one line on stderr and an exit code.

``--debug`` (a root option) adds the traceback. Usage errors exit with 2 (as Typer does),
everything else with 1. Typer's own exceptions are found through its public ``BadParameter``
so this works whether Typer bundles Click or depends on it.
"""

from __future__ import annotations

import json
import traceback
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from .._errors import BgcoorError
from ._output import CliError, print_error

_CLICK_BASES = {cls.__name__: cls for cls in typer.BadParameter.__mro__}
UsageError: type[Exception] = _CLICK_BASES["UsageError"]
ClickException: type[Exception] = _CLICK_BASES["ClickException"]


def _debug_requested(ctx: Any) -> bool:
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and root.params.get("debug"))


def _fail(exc: BaseException, debug: bool) -> NoReturn:
    if isinstance(exc, CliError):
        message, code = exc.message, exc.exit_code
    elif isinstance(exc, BgcoorError):
        message, code = str(exc), 1
    elif isinstance(exc, json.JSONDecodeError):
        message, code = f"invalid JSON: {exc}", 2
    else:
        message = f"unexpected {type(exc).__name__}: {exc}"
        if not debug:
            message += " (run with --debug for the traceback)"
        code = 1
    if debug:
        traceback.print_exception(exc)
    print_error(message)
    raise typer.Exit(code) from None


def _usage(exc: Exception) -> NoReturn:
    ctx = getattr(exc, "ctx", None)
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    if "--debug" in message:
        message = f"{message.rstrip('.')}. --debug goes before the command: bgcoor --debug ..."
    elif ctx is not None:
        message = f"{message.rstrip('.')}. See '{ctx.command_path} --help'."
    print_error(message)
    raise typer.Exit(getattr(exc, "exit_code", 2)) from None


class BgcoorGroup(TyperGroup):
    """A Typer group that reports errors in one line instead of tracebacks or panels."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise  # bare ``bgcoor``: Typer prints the help
            _usage(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, BrokenPipeError):
            raise  # Typer handles these (a closed pipe, as in `bgcoor ... | head`, is quiet)
        except UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise  # ``bgcoor dlq``: Typer prints that group's help
            _usage(exc)
        except ClickException:
            raise
        except Exception as exc:
            _fail(exc, _debug_requested(ctx))
