"""``bgcoor plugins``: what is installed, what each plugin provides, and what failed."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._errors import PluginError
from .._handlers import FunctionHandler
from .._manager import TaskManager
from .._plugins import PluginHost, PluginInfo, build_plugin_host
from .._settings import load_settings
from .._task_registry import TaskRegistry
from ._app_loading import load_manager
from ._options import AppOption, JsonOption
from ._output import cell, clean, out_console, print_json


def plugins(app: AppOption = None, as_json: JsonOption = False) -> None:
    """Every discovered plugin (distribution, version, what it provides) and any that failed.

    With --app, also the programmatic plugins and the registered tasks of that manager.
    """
    manager = load_manager(app) if app else None
    settings = manager.settings if manager is not None else load_settings()
    # Not strict: a plugin that fails to import is listed with why instead of aborting.
    host = build_plugin_host(strict=False, disabled=settings.disable_plugins)
    shown = host
    if manager is not None:
        # The manager's host includes plugins passed to TaskManager(plugins=...); it fails
        # on a broken entry point, which is then listed below as a failure.
        with contextlib.suppress(PluginError):
            shown = manager.host
    try:
        if as_json:
            print_json(_as_data(shown, host, settings.disable_plugins, manager))
        else:
            _print_tables(shown, host, settings.disable_plugins, manager, app or "")
    finally:
        if manager is not None:
            manager.close_sync()


def _print_tables(
    shown: PluginHost,
    host: PluginHost,
    disabled: list[str],
    manager: TaskManager | None,
    app: str,
) -> None:
    console = out_console()
    console.print(_plugin_table(shown.describe(), _tasks_by_plugin(shown)))
    if disabled:
        console.print(cell("disabled by BGCOOR_DISABLE_PLUGINS: " + ", ".join(disabled)))
    _print_failures(console, host)
    if manager is not None:
        console.print()
        console.print(_task_table(manager, app))


def _as_data(
    shown: PluginHost, host: PluginHost, disabled: list[str], manager: TaskManager | None
) -> dict[str, Any]:
    """What the tables show, under stable keys; ``tasks`` is null without --app."""
    tasks = _tasks_by_plugin(shown)
    return {
        "plugins": [
            {
                "name": info.name,
                "distribution": info.distribution,
                "version": info.version,
                "provides": info.provides,
                "tasks": tasks.get(info.name, []),
            }
            for info in sorted(shown.describe(), key=lambda i: i.name)
        ],
        "disabled": list(disabled),
        "failures": [
            {"name": f.name, "distribution": f.distribution, "error": f.error}
            for f in host.failures
        ],
        "tasks": None
        if manager is None
        else [_task_data(manager, n) for n in manager.registry.names()],
    }


def _task_data(manager: TaskManager, name: str) -> dict[str, Any]:
    entry = manager.registry.get(name)
    opts = entry.options
    return {
        "name": name,
        "queue": opts.queue,
        "priority": opts.priority,
        "max_retries": opts.max_retries,
        "timeout": opts.timeout,
        "runs": _callable(entry.handler, entry.is_async),
    }


def _plugin_table(infos: list[PluginInfo], tasks: dict[str, list[str]]) -> Table:
    table = Table(title=Text("Plugins"), title_justify="left")
    for column in ("plugin", "distribution", "version", "provides"):
        table.add_column(column)
    for info in sorted(infos, key=lambda i: i.name):
        provides = [*info.provides, *(f"task {name}" for name in tasks.get(info.name, []))]
        table.add_row(
            cell(info.name),
            cell(info.distribution),
            cell(info.version),
            Text("\n".join(map(clean, provides)) or "-"),
        )
    return table


def _tasks_by_plugin(host: PluginHost) -> dict[str, list[str]]:
    """Task names each plugin contributes, found by calling its hook into a scratch registry."""
    found: dict[str, list[str]] = {}
    for impl in host.pm.hook.bgcoor_register_tasks.get_hookimpls():
        scratch = TaskRegistry()
        try:
            impl.function(*[scratch for _ in impl.argnames])
        except Exception as exc:
            found[impl.plugin_name] = [f"(failed: {type(exc).__name__}: {exc})"]
        else:
            found[impl.plugin_name] = scratch.names()
    return found


def _print_failures(console: Console, host: PluginHost) -> None:
    if not host.failures:
        console.print("no plugin failed to load")
        return
    table = Table(title=Text("Plugins that failed to load", "red"), title_justify="left")
    for column in ("plugin", "distribution", "error"):
        table.add_column(column)
    for failure in host.failures:
        table.add_row(cell(failure.name), cell(failure.distribution), cell(failure.error, "red"))
    console.print(table)


def _task_table(manager: TaskManager, app: str) -> Table:
    table = Table(title=cell(f"Tasks registered by {app}"), title_justify="left")
    table.add_column("task", no_wrap=True)
    table.add_column("queue", no_wrap=True)
    for column in ("prio", "retries", "timeout"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("runs", ratio=1, overflow="fold")
    for name in manager.registry.names():
        entry = manager.registry.get(name)
        opts = entry.options
        table.add_row(
            cell(name),
            cell(opts.queue),
            str(opts.priority),
            "default" if opts.max_retries is None else str(opts.max_retries),
            "-" if opts.timeout is None else f"{opts.timeout:g}s",
            cell(_callable(entry.handler, entry.is_async)),
        )
    if not manager.registry.names():
        table.caption = "no tasks registered"
    return table


def _callable(handler: Any, is_async: bool) -> str:
    """``def add(x: int, y: int) -> int``, or the handler object's class."""
    if not isinstance(handler, FunctionHandler):
        return f"{type(handler).__name__}.run(payload)"
    prefix = "async def" if is_async else "def"
    return f"{prefix} {getattr(handler.fn, '__name__', '?')}{_signature(handler)}"


def _signature(handler: FunctionHandler) -> str:
    """The function's signature with string annotations resolved where possible."""
    try:
        return str(inspect.signature(handler.fn, eval_str=True))
    except Exception:  # an unresolvable forward reference: show it as written
        return str(handler.signature)
