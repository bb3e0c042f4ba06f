"""Resolving ``APP`` (``module:attribute`` or ``module``) to the user's :class:`TaskManager`."""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import TypeVar

from .._errors import BgcoorError
from .._manager import TaskManager
from ._output import CliError
from ._reach import check_reachable

T = TypeVar("T")

#: Attribute names tried, in order, when ``APP`` names only a module.
CONVENTIONAL_NAMES = ("manager", "app")


def load_manager(spec: str) -> TaskManager:
    """Import ``spec`` (``pkg.module:attr``, ``pkg.module:obj.attr`` or ``pkg.module``).

    The current directory is put on ``sys.path`` first, as ``python -m`` would. Every
    problem is a :class:`CliError` whose one line says what to fix.
    """
    module_name, colon, attr = spec.partition(":")
    if not module_name or (colon and not attr):
        raise CliError(f"invalid APP {spec!r}: use 'module:attribute' or 'module'", exit_code=2)
    module = _import(module_name)
    if not attr:
        return _conventional(module, module_name)
    obj = _resolve(module, module_name, attr)
    if not isinstance(obj, TaskManager):
        raise CliError(
            f"APP {module_name}:{attr} is a {type(obj).__name__}, not a TaskManager"
            f"{_candidates_hint(module, module_name)}"
        )
    return obj


def manager_for(app: str | None) -> TaskManager:
    """The manager of ``--app``, or one built from the ``BGCOOR_*`` settings."""
    return load_manager(app) if app else TaskManager()


def run_with_manager(app: str | None, body: Callable[[TaskManager], Awaitable[T]]) -> T:
    """Run ``body(manager)`` on a fresh event loop and close the manager afterwards.

    For one-off commands: an unreachable broker or storage server fails at once, naming
    its setting (:func:`check_reachable`), instead of after the backend's reconnect retries.
    """
    manager = manager_for(app)

    async def main() -> T:
        try:
            await check_reachable(manager.settings)
            return await body(manager)
        finally:
            await manager.close()

    return asyncio.run(main())


def _import(module_name: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            hint = f"; did you mean {module_name[:-3]!r}?" if module_name.endswith(".py") else ""
            raise CliError(
                f"cannot import APP module {module_name!r}: no module named {missing!r} "
                f"(searched the current directory {cwd} and sys.path){hint}"
            ) from exc
        raise CliError(_import_failed(module_name, exc)) from exc
    except BgcoorError:
        raise  # e.g. invalid BGCOOR_* settings read by TaskManager() at import: say that
    except Exception as exc:
        raise CliError(_import_failed(module_name, exc)) from exc


def _import_failed(module_name: str, exc: BaseException) -> str:
    return f"importing APP module {module_name!r} failed: {type(exc).__name__}: {exc}"


def _resolve(module: ModuleType, module_name: str, attr: str) -> object:
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(
                f"module {module_name!r} has no attribute {attr!r}"
                f"{_candidates_hint(module, module_name)}"
            ) from None
    return obj


def _conventional(module: ModuleType, module_name: str) -> TaskManager:
    for name in CONVENTIONAL_NAMES:
        value = getattr(module, name, None)
        if isinstance(value, TaskManager):
            return value
    found = _managers_in(module)
    if len(found) == 1:
        return getattr(module, found[0])  # type: ignore[no-any-return]
    names = " or ".join(repr(n) for n in CONVENTIONAL_NAMES)
    if found:
        raise CliError(
            f"module {module_name!r} has several TaskManager objects ({', '.join(found)}) "
            f"and none is called {names}; say which, e.g. {module_name}:{found[0]}"
        )
    raise CliError(
        f"module {module_name!r} has no TaskManager (looked for {names}); "
        f"point APP at one as {module_name}:NAME"
    )


def _managers_in(module: ModuleType) -> list[str]:
    return sorted(name for name, value in vars(module).items() if isinstance(value, TaskManager))


def _candidates_hint(module: ModuleType, module_name: str) -> str:
    found = _managers_in(module)
    if not found:
        return f"; module {module_name!r} defines no TaskManager"
    return "; TaskManager objects in it: " + ", ".join(f"{module_name}:{n}" for n in found)
