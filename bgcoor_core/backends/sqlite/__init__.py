"""Built-in SQLite backend: broker and storage in one file, shared by processes on one host.

Registered for ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` through
the ``bgcoor`` entry-point group like any other plugin.
"""

from __future__ import annotations

from ..._backend_registry import BackendContext, BrokerRegistry, StorageRegistry
from ...hookspecs import hookimpl
from ._backend import SQLiteBackend, SQLiteOptions, parse_sqlite_url

__all__ = ["SQLiteBackend", "SQLiteOptions", "parse_sqlite_url"]


def _open(url: str, context: BackendContext) -> SQLiteBackend:
    path, options = parse_sqlite_url(url)
    return SQLiteBackend(path, context.codec, options)


def _test_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/bgcoor-test.db"


@hookimpl
def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
    brokers.add("sqlite", _open, test_url=_test_url)


@hookimpl
def bgcoor_register_storages(storages: StorageRegistry) -> None:
    storages.add("sqlite", _open, test_url=_test_url)
