"""The hook bg-coor loads through the ``bgcoor`` entry point (``cbor``), kept light on
purpose: registering imports no cbor2 (see :mod:`bgcoor_cbor._serializer`)."""

from __future__ import annotations

from bgcoor_core import SerializerRegistry, hookimpl

from ._serializer import CborSerializer


@hookimpl
def bgcoor_register_serializers(serializers: SerializerRegistry) -> None:
    serializers.add(CborSerializer())
