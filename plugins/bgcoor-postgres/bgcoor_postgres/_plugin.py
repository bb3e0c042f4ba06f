"""The hooks bg-coor loads through the ``bgcoor`` entry point, kept light on purpose.

bg-coor loads every installed plugin when it starts, so registering imports neither
asyncpg nor the backend: they are imported the first time a ``postgresql://`` URL is
opened.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bgcoor_core import BackendContext, Broker, BrokerRegistry, StorageRegistry, hookimpl

if TYPE_CHECKING:
    from ._backend import PostgresBackend
    from ._cancels import PostgresCancelSignals


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


@hookimpl
def bgcoor_cancel_signals(broker: Broker) -> PostgresCancelSignals | None:
    """NOTIFY/LISTEN on the broker's own database and schema, when it is ours."""
    module = sys.modules.get(f"{__package__}._backend")
    if module is None or not isinstance(broker, module.PostgresBackend):
        return None  # never imported: no broker of ours exists in this process
    from ._cancels import PostgresCancelSignals

    return PostgresCancelSignals(broker._db, broker.target.schema)
