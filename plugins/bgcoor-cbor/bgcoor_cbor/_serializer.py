"""The CBOR serializer bg-coor registers (the wire format: :mod:`bgcoor_cbor._tags`).

bg-coor loads every installed plugin's hooks when a process starts, so registering imports
no cbor2: the encoder and decoder are imported the first time a value is encoded or
decoded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

CONTENT_TYPE: Final = "application/cbor"


@functools.cache
def _encoder() -> Callable[[Any], bytes]:
    from ._encoding import encode

    return encode


@functools.cache
def _decoder() -> Callable[[bytes], Any]:
    from ._decoding import decode

    return decode


class CborSerializer:
    """A task's fields as one CBOR map, every rich value in a tag (the README's wire
    format). ``dumps`` raises ``TypeError`` or ``ValueError`` naming what it cannot carry;
    ``loads`` builds only the types the format carries and raises ``ValueError`` for
    anything else (an unknown tag, a simple value, trailing bytes, nesting past 200)."""

    content_type = CONTENT_TYPE
    name = "cbor"

    def dumps(self, data: Any) -> bytes:
        return _encoder()(data)

    def loads(self, raw: bytes) -> Any:
        return _decoder()(raw)
