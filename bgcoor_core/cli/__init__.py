"""The ``bgcoor`` command line: workers, enqueueing, inspection, the dead-letter queue.

``app`` is the Typer application; ``main()`` is the console-script entry point
(``bgcoor = "bgcoor_core.cli:main"``), also reachable as ``python -m bgcoor_core.cli``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from .. import __version__
from .._extensions import WorkerOption
from ._admin import cancel, purge
from ._app_loading import run_with_manager
from ._demo import demo
from ._dlq import dlq_app
from ._extend import add_plugin_commands, load_plugin_host, with_options
from ._extend import worker_options as worker_options_of
from ._group import BgcoorGroup
from ._migrate import migrate
from ._options import AppArgument, AppOption
from ._plugins import plugins
from ._records import tasks
from ._scheduler import scheduler
from ._schedules import schedules
from ._status import status
from ._tasks import enqueue, inspect
from ._worker import worker
from ._workflow import workflow


def make_app(worker_options: Sequence[WorkerOption] = ()) -> typer.Typer:
    """The ``bgcoor`` application with the core's commands; ``worker_options`` are the
    ``bgcoor worker`` options plugins add (:mod:`._extend`)."""
    cli = typer.Typer(
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
    cli.callback()(_root)
    cli.command("worker")(with_options(worker, list(worker_options)))
    cli.command("enqueue")(enqueue)
    cli.command("status")(status)
    cli.command("inspect")(inspect)
    cli.command("tasks")(tasks)
    cli.command("cancel")(cancel)
    cli.command("purge")(purge)
    cli.command("scheduler")(scheduler)
    cli.command("workflow")(workflow)
    cli.command("schedules")(schedules)
    cli.add_typer(dlq_app, name="dlq")
    cli.command("plugins")(plugins)
    cli.command("demo")(demo)
    cli.command("migrate")(migrate)
    return cli


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"bgcoor {__version__}")
        raise typer.Exit()


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


#: The core application, without what plugins add (what ``main`` runs adds it).
app = make_app()


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of the ``bgcoor`` console script: the core commands plus those of the
    installed plugins, and their ``bgcoor worker`` options."""
    host = load_plugin_host()
    cli = make_app(worker_options_of(host))
    if host is not None:
        add_plugin_commands(cli, host)
    typer.main.get_command(cli)(None if args is None else list(args), prog_name="bgcoor")


__all__ = ["AppArgument", "AppOption", "app", "main", "make_app", "run_with_manager"]
