"""``bgcoor scheduler APP``: fire APP's periodic tasks (no worker) until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from .._manager import TaskManager
from .._scheduler import Scheduler
from ._app_loading import load_manager
from ._banner import shown_url
from ._options import AppArgument
from ._output import CliError, logging_to_stderr, out_console
from ._worker import LogLevel, log_level_option


def scheduler(app: AppArgument, log_level: log_level_option = LogLevel.INFO) -> None:
    """Run only the scheduler for APP's schedules: any number may run at once (every
    worker runs one too, unless --no-scheduler), and each tick fires once."""
    manager = load_manager(app)
    with logging_to_stderr(log_level.value):
        asyncio.run(_serve(manager))


async def _serve(manager: TaskManager) -> None:
    console = out_console()
    try:
        try:
            runner = Scheduler.of(manager)
        except Exception as exc:
            raise CliError(str(exc)) from None
        declared = len(runner.definitions)
        console.print(
            f"scheduler for {shown_url(manager.settings.broker_url)}: "
            f"{declared} schedule(s) declared in the app"
        )
        serving = asyncio.create_task(runner.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, serving.cancel)
        console.print("[green]ready[/]: press Ctrl+C to stop")
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        console.print("scheduler stopped")
    finally:
        await manager.close()
