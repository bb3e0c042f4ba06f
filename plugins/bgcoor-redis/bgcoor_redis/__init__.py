"""Redis broker and storage for bg-coor: ``redis://`` and ``rediss://`` (TLS) URLs.

Installed as its own distribution (``pip install bgcoor-redis``); bg-coor finds it through
the ``bgcoor`` entry-point group. See the README for the design, the key layout and the
Redis round trips per task.
"""

from __future__ import annotations

from bgcoor_core import BackendContext, BrokerRegistry, StorageRegistry, hookimpl

from ._backend import LAYOUT_VERSION, RedisBackend
from ._options import RedisOptions, RedisTarget, parse_redis_url
from ._scripts import MAX_PRIORITY, MIN_PRIORITY
from ._testing import test_url

__all__ = [
    "LAYOUT_VERSION",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "RedisBackend",
    "RedisOptions",
    "RedisTarget",
    "parse_redis_url",
]

SCHEMES = ("redis", "rediss")


def _open(url: str, context: BackendContext) -> RedisBackend:
    return RedisBackend(parse_redis_url(url), context.codec)


@hookimpl
def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
    for scheme in SCHEMES:
        brokers.add(scheme, _open, test_url=test_url if scheme == "redis" else None)


@hookimpl
def bgcoor_register_storages(storages: StorageRegistry) -> None:
    for scheme in SCHEMES:
        storages.add(scheme, _open, test_url=test_url if scheme == "redis" else None)
