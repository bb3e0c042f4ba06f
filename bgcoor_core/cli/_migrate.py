"""``bgcoor migrate``: apply pending schema migrations of the configured backends."""

from __future__ import annotations

import typer

from .._broker import Migratable
from .._manager import TaskManager
from ._app_loading import run_with_manager
from ._options import AppOption
from ._output import clean


def migrate(app: AppOption = None) -> None:
    """Apply pending schema migrations of the broker and storage (safe to run repeatedly)."""
    lines = run_with_manager(app, apply_migrations)
    for line in lines:
        typer.echo(clean(f"applied: {line}"))
    if not lines:
        typer.echo("schema is up to date")


async def apply_migrations(manager: TaskManager) -> list[str]:
    applied: list[str] = []
    seen: list[object] = []
    for backend in (manager.broker, manager.storage):
        if any(backend is other for other in seen):
            continue
        seen.append(backend)
        if isinstance(backend, Migratable):
            applied += await backend.migrate()
    return applied
