"""Built-in serializers, registered as an ordinary plugin (entry point ``json``).

JSON is the default. Pickle is registered too, but it is ``trusted_only``: a codec
accepts it only when ``BGCOOR_SERIALIZER`` or ``BGCOOR_ACCEPT_CONTENT`` names it, so
pickle payloads are refused unless a user enables it explicitly.
"""

from __future__ import annotations

import pickle
from typing import Any

from ._backend_registry import SerializerRegistry
from ._codec import JsonSerializer
from .hookspecs import hookimpl


class PickleSerializer:
    """Only for trusted producers: unpickling runs arbitrary code. Carries any object
    that pickles; records (JSON) hold such a value sealed (:class:`~bgcoor_core.kit.Opaque`)."""

    content_type = "application/x-python-pickle"
    name = "pickle"
    trusted_only = True
    carries_objects = True

    def dumps(self, data: Any) -> bytes:
        return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, raw: bytes) -> Any:
        return pickle.loads(raw)


@hookimpl
def bgcoor_register_serializers(serializers: SerializerRegistry) -> None:
    serializers.add(JsonSerializer())
    serializers.add(PickleSerializer())


__all__ = ["JsonSerializer", "PickleSerializer", "bgcoor_register_serializers"]
