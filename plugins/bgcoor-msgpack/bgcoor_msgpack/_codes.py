"""The extension type codes of bg-coor's msgpack wire format (see :mod:`._wire`).

Kept apart from the codec so that naming them imports no msgpack.
"""

from __future__ import annotations

from typing import Final

#: Extension type codes (msgpack's application range is 0..127).
DATETIME: Final = 1  # ISO 8601 text (ASCII); naive: no offset; sub-minute offset: naive@µs
DATE: Final = 2  # ISO 8601 text, YYYY-MM-DD
TIME: Final = 3  # ISO 8601 text; the offset as for DATETIME
TIMEDELTA: Final = 4  # 12 bytes: int32 days, uint32 seconds, uint32 microseconds (big-endian)
UUID: Final = 5  # the 16 bytes of the UUID (RFC 9562 order)
DECIMAL: Final = 6  # text as str(Decimal) writes it: "1.10", "-0", "1E+3", "-Infinity"
BIGINT: Final = 7  # an integer outside msgpack's range: big-endian two's complement
SET: Final = 8  # a msgpack array of the elements (tuples among them as arrays)
FROZENSET: Final = 9  # the same, for a frozenset
OPAQUE: Final = 10  # a msgpack array [content type: str, data: bin, codecs: str]

#: How many sets may nest in one another (a frozenset in a set in ...): each level is an
#: extension inside an extension, decoded by a call of its own. Refused beyond, both ways.
MAX_NESTING: Final = 32
