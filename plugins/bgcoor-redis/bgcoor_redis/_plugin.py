"""The hooks bg-coor loads through the ``bgcoor`` entry point, kept light on purpose.

bg-coor loads every installed plugin when it starts, so registering imports neither
redis-py nor the backend: they are imported the first time a ``redis://`` URL is opened.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bgcoor_core import BackendContext, Broker, BrokerRegistry, StorageRegistry, hookimpl

if TYPE_CHECKING:
    from ._backend import RedisBackend
    from ._cancels import RedisCancelSignals

SCHEMES = ("redis", "rediss")


def _open(url: str, context: BackendContext) -> RedisBackend:
    from ._backend import RedisBackend
    from ._options import parse_redis_url

    return RedisBackend(parse_redis_url(url), context.codec)


def _test_url(tmp_path: Path) -> str:
    from ._testing import test_url

    return test_url(tmp_path)


@hookimpl
def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
    for scheme in SCHEMES:
        brokers.add(scheme, _open, test_url=_test_url if scheme == "redis" else None)


@hookimpl
def bgcoor_register_storages(storages: StorageRegistry) -> None:
    for scheme in SCHEMES:
        storages.add(scheme, _open, test_url=_test_url if scheme == "redis" else None)


@hookimpl
def bgcoor_cancel_signals(broker: Broker) -> RedisCancelSignals | None:
    """PUBLISH/SUBSCRIBE on the broker's own database and prefix, when it is ours."""
    module = sys.modules.get(f"{__package__}._backend")
    if module is None or not isinstance(broker, module.RedisBackend):
        return None  # never imported: no broker of ours exists in this process
    from ._cancels import RedisCancelSignals

    return RedisCancelSignals(broker)
