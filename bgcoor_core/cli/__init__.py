"""The ``bgcoor`` command line: workers, enqueueing, inspection, the dead-letter queue.

``app`` is the Typer application; ``main()`` is the console-script entry point
(``bgcoor = "bgcoor_core.cli:main"``), also reachable as ``python -m bgcoor_core.cli``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from ._demo import demo
from ._dlq import dlq_app
from ._group import BgcoorGroup
from ._migrate import migrate
from ._plugins import plugins
from ._status import status
from ._tasks import enqueue, inspect
from ._worker import worker

app = typer.Typer(
    name="bgcoor",
    cls=BgcoorGroup,
    help="bg-coor: background tasks with pluggable brokers and storages.\n\n"
    "Backends come from BGCOOR_BROKER_URL and BGCOOR_STORAGE_URL (see the docs for every "
    "BGCOOR_* setting). New here? Run 'bgcoor demo'.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"bgcoor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Options read by every command (``--debug`` is looked up by the error handler)."""


app.command("worker")(worker)
app.command("enqueue")(enqueue)
app.command("status")(status)
app.command("inspect")(inspect)
app.add_typer(dlq_app, name="dlq")
app.command("plugins")(plugins)
app.command("demo")(demo)
app.command("migrate")(migrate)


def main() -> None:
    """Entry point of the ``bgcoor`` console script."""
    app(prog_name="bgcoor")


__all__ = ["app", "main"]
