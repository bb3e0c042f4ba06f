"""PostgreSQL broker and storage for bg-coor.

Registered for ``postgresql://`` (and ``postgres://``) URLs through the ``bgcoor``
entry-point group (``bgcoor_postgres._plugin``). When the broker and storage URLs are
equal, one :class:`PostgresBackend` serves both, storing outcomes and acks in one
statement.

The names below are imported on first use, so that merely having the plugin installed
costs a process nothing (bg-coor loads every installed plugin's hooks at start).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._backend import PostgresBackend
    from ._options import PostgresOptions, PostgresTarget, parse_postgres_url
    from ._schema import SCHEMA_VERSION, SchemaNotMigratedError, SchemaTooNewError
    from ._transactional import backend_of, enqueue_in

_WHERE = {
    "PostgresBackend": "._backend",
    "PostgresOptions": "._options",
    "PostgresTarget": "._options",
    "parse_postgres_url": "._options",
    "SCHEMA_VERSION": "._schema",
    "SchemaNotMigratedError": "._schema",
    "SchemaTooNewError": "._schema",
    "backend_of": "._transactional",
    "enqueue_in": "._transactional",
}

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


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
