"""Redis broker and storage for bg-coor: ``redis://`` and ``rediss://`` (TLS) URLs.

Installed as its own distribution (``pip install bgcoor-redis``); bg-coor finds it through
the ``bgcoor`` entry-point group (``bgcoor_redis._plugin``). See the README for the design,
the key layout and the Redis round trips per task.

The names below are imported on first use, so that merely having the plugin installed
costs a process nothing (bg-coor loads every installed plugin's hooks at start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import LAYOUT_VERSION, RedisBackend
    from ._options import RedisOptions, RedisTarget, parse_redis_url
    from ._scripts import MAX_PRIORITY, MIN_PRIORITY

_WHERE = {
    "LAYOUT_VERSION": "._backend",
    "RedisBackend": "._backend",
    "RedisOptions": "._options",
    "RedisTarget": "._options",
    "parse_redis_url": "._options",
    "MAX_PRIORITY": "._scripts",
    "MIN_PRIORITY": "._scripts",
}

__all__ = [
    "LAYOUT_VERSION",
    "MAX_PRIORITY",
    "MIN_PRIORITY",
    "RedisBackend",
    "RedisOptions",
    "RedisTarget",
    "parse_redis_url",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
