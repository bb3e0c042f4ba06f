"""``bgcoor worker --reload``: run the worker in a child process and restart it whenever a
Python file under the current directory changes (for development).

The file watching is the ``watchfiles`` package (``pip install 'bgcoor[reload]'``). A
restart stops the child as Ctrl+C would (one SIGINT: running tasks finish, up to
``BGCOOR_SHUTDOWN_GRACE``); SIGTERM or Ctrl+C stops the watcher and the child, exit 0.
"""

from __future__ import annotations

import math
import os
import shlex
import sys
from typing import Any

from .._settings import load_settings
from ._output import CliError, clean, err_console

#: Seconds beyond the shutdown grace a child may take to stop before it is killed.
STOP_MARGIN = 5


def run_reloading(argv: list[str]) -> None:
    """Run ``bgcoor ARGV`` (a worker without ``--reload``), restarting it on changes."""
    try:
        import watchfiles
    except ImportError:
        raise CliError(
            "--reload needs the watchfiles package: pip install 'bgcoor[reload]'"
        ) from None
    directory = os.getcwd()
    command = shlex.join([sys.executable, "-m", "bgcoor_core.cli", *argv])
    grace = math.ceil(load_settings().shutdown_grace)
    err_console().print(
        clean(f"reload: watching Python files under {directory}; restarting the worker on change")
    )
    watchfiles.run_process(
        directory,
        target=command,
        target_type="command",
        watch_filter=watchfiles.PythonFilter(),
        callback=_report,
        sigint_timeout=grace + STOP_MARGIN,
    )


def _report(changes: set[Any]) -> None:
    paths = sorted({os.path.relpath(path) for _, path in changes})
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    err_console().print(clean(f"reload: {shown} changed; restarting the worker"))
