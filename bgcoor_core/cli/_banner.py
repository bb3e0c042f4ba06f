"""What the worker's banner says about its backends: URLs (redacted; a SQLite file by its
absolute path) and a warning when results would stay where no producer can read them."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from .._backend_registry import redact
from ._reach import IN_PROCESS


def sqlite_file(url: str) -> str | None:
    """The absolute path of the file a ``sqlite://`` URL names (relative URLs are relative
    to the current directory), or ``None`` for another URL or an in-memory database."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme != "sqlite" or parts.netloc:
        return None
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path == ":memory:" or path.startswith("file:"):
        return None
    return os.path.abspath(path)


def shown_url(url: str) -> str:
    """``url`` redacted, and for a SQLite file its absolute path: ``sqlite:///bgcoor.db``
    says nothing about which directory's file a worker uses."""
    path = sqlite_file(url)
    shown = redact(url)
    written = urlsplit(url).path[1:]  # sqlite:////srv/a.db: already absolute
    return f"{shown} ({path})" if path and path != written else shown


def local_results_warning(broker_url: str, storage_url: str) -> str | None:
    """A warning when tasks come through a server but their records stay in this machine's
    SQLite file (or this process's memory): a producer elsewhere enqueues fine, then
    waits for results it can never read."""
    broker = urlsplit(broker_url).scheme.lower()
    storage = urlsplit(storage_url).scheme.lower()
    if broker in IN_PROCESS or storage not in IN_PROCESS:
        return None
    where = sqlite_file(storage_url) or "this process's memory"
    return (
        f"the broker is a server ({broker}://) but task records and results are kept in "
        f"{where}: producers on other machines will never see them; point "
        "BGCOOR_STORAGE_URL at a server too"
    )
