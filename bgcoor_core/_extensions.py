"""Registries of the extension hooks that are not backends: worker services, plugin
task options and options of ``bgcoor worker``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from ._errors import PluginError, TaskRegistrationError

if TYPE_CHECKING:
    from ._pool import WorkerPool

ServiceRun = Callable[["WorkerPool"], Coroutine[Any, Any, None]]


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    run: ServiceRun
    plugin: str


class ServiceRegistry:
    """Long-running services a worker pool starts and stops (``bgcoor_register_services``)."""

    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.current_plugin = "<programmatic>"

    def add(self, name: str, run: ServiceRun) -> None:
        """Run ``run(pool)`` beside the pool until the pool stops (it is cancelled then)."""
        if name in self.services:
            raise PluginError(
                f"worker service {name!r} is added twice: by {self.services[name].plugin!r} "
                f"and {self.current_plugin!r}"
            )
        self.services[name] = Service(name, run, self.current_plugin)


@dataclass(frozen=True, slots=True)
class PluginOption:
    name: str
    adapter: TypeAdapter[Any]
    default: Any
    help: str
    plugin: str


class OptionRegistry:
    """Task options declared by plugins (``bgcoor_register_task_options``)."""

    def __init__(self, reserved: frozenset[str] = frozenset()) -> None:
        self.options: dict[str, PluginOption] = {}
        self.current_plugin = "<programmatic>"
        self._reserved = reserved  # the core's own option names

    def add(self, name: str, kind: Any, *, default: Any = None, help: str = "") -> None:
        """Accept ``name=...`` in ``@manager.task``, validated as ``kind`` (any type
        pydantic validates: ``int``, ``str | None``, a ``Literal``, a model)."""
        if not name.isidentifier() or name in self._reserved:
            raise PluginError(
                f"task option {name!r} of plugin {self.current_plugin!r}: "
                "not an identifier, or a core option's name"
            )
        if name in self.options:
            raise PluginError(
                f"task option {name!r} is declared twice: by {self.options[name].plugin!r} "
                f"and {self.current_plugin!r}"
            )
        adapter: TypeAdapter[Any] = TypeAdapter(kind)
        self.options[name] = PluginOption(name, adapter, default, help, self.current_plugin)

    def validate(self, task: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """The plugin options of a task: ``given`` checked, the rest at their defaults."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = sorted(self._reserved | set(self.options))
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TaskRegistrationError(f"task {task!r}: unknown option {unknown[0]!r}{hint}")
        values: dict[str, Any] = {}
        for name, option in self.options.items():
            if name not in given:
                values[name] = option.default
                continue
            try:
                values[name] = option.adapter.validate_python(given[name])
            except ValidationError as exc:
                problem = exc.errors(include_url=False)[0]["msg"]
                raise TaskRegistrationError(
                    f"task {task!r}: option {name!r} (from plugin {option.plugin!r}): {problem}"
                ) from None
        return values


#: Value types a ``bgcoor worker`` option of a plugin may have.
WORKER_OPTION_TYPES: tuple[type, ...] = (str, int, float, bool)
_FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")
_ENV = re.compile(r"[A-Z_][A-Z0-9_]*")


@dataclass(frozen=True, slots=True)
class WorkerOption:
    flag: str
    env: str
    kind: type
    help: str
    plugin: str


class WorkerOptionRegistry:
    """Options plugins add to ``bgcoor worker`` (``bgcoor_register_worker_options``)."""

    def __init__(self) -> None:
        self.options: dict[str, WorkerOption] = {}
        self.current_plugin = "<programmatic>"

    def add(self, flag: str, *, env: str, type: type = str, help: str = "") -> None:
        """Add ``flag`` (``--metrics-port``) to ``bgcoor worker``. A value given on the
        command line is exported as the environment variable ``env`` before the app is
        imported, so the plugin's own settings read it where a deployment would set it.
        ``type`` is ``str``, ``int``, ``float`` or ``bool`` (a ``--flag/--no-flag`` pair)."""
        where = f"worker option {flag!r} of plugin {self.current_plugin!r}"
        if not _FLAG.fullmatch(flag):
            raise PluginError(f"{where}: use a long option in lower case, e.g. --metrics-port")
        if not _ENV.fullmatch(env):
            raise PluginError(f"{where}: env {env!r} is not an upper-case variable name")
        if type not in WORKER_OPTION_TYPES:
            names = ", ".join(t.__name__ for t in WORKER_OPTION_TYPES)
            raise PluginError(f"{where}: type must be one of {names}")
        if flag in self.options:
            raise PluginError(
                f"worker option {flag!r} is added twice: by {self.options[flag].plugin!r} "
                f"and {self.current_plugin!r}"
            )
        self.options[flag] = WorkerOption(flag, env, type, help, self.current_plugin)
