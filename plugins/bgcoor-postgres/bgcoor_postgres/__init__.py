"""PostgreSQL broker and storage for bg-coor.

Registered for ``postgresql://`` (and ``postgres://``) URLs through the ``bgcoor``
entry-point group. When the broker and storage URLs are equal, one
:class:`PostgresBackend` serves both, storing outcomes and acks in one statement.
"""

from __future__ import annotations

from pathlib import Path

from bgcoor_core import BackendContext, BrokerRegistry, StorageRegistry, hookimpl

from ._backend import PostgresBackend
from ._options import PostgresOptions, PostgresTarget, parse_postgres_url
from ._schema import SCHEMA_VERSION, SchemaNotMigratedError, SchemaTooNewError
from ._transactional import backend_of, enqueue_in

__all__ = [
    "SCHEMA_VERSION",
    "PostgresBackend",
    "PostgresOptions",
    "PostgresTarget",
    "SchemaNotMigratedError",
    "SchemaTooNewError",
    "backend_of",
    "enqueue_in",
    "parse_postgres_url",
]


def _open(url: str, context: BackendContext) -> PostgresBackend:
    return PostgresBackend(parse_postgres_url(url), context.codec)


def _test_url(tmp_path: Path) -> str:
    from ._testing import make_test_url

    return make_test_url(tmp_path)


@hookimpl
def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
    brokers.add("postgresql", _open, test_url=_test_url)
    brokers.add("postgres", _open)


@hookimpl
def bgcoor_register_storages(storages: StorageRegistry) -> None:
    storages.add("postgresql", _open, test_url=_test_url)
    storages.add("postgres", _open)
