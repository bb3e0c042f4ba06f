"""The hook bg-coor loads through the ``bgcoor`` entry point (``msgpack``)."""

from __future__ import annotations

from bgcoor_core import SerializerRegistry, hookimpl

from ._serializer import MsgpackSerializer


@hookimpl
def bgcoor_register_serializers(serializers: SerializerRegistry) -> None:
    serializers.add(MsgpackSerializer())
