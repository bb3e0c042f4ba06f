"""The hooks bg-coor loads through the ``bgcoor`` entry point, kept light on purpose.

bg-coor loads every installed plugin when it starts, so registering imports neither
asyncpg nor the backend: they are imported the first time a ``postgresql://`` URL is
opened.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bgcoor_core import BackendContext, BrokerRegistry, StorageRegistry, hookimpl

if TYPE_CHECKING:
    from ._backend import PostgresBackend


def _open(url: str, context: BackendContext) -> PostgresBackend:
    from ._backend import PostgresBackend
    from ._options import parse_postgres_url

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
