"""The CBOR tag numbers of the wire format: a stable contract, never renumbered.

Standard tags (RFC 8949 and the IANA registry) carry what they describe exactly; the
rest are tags of this plugin's own, unregistered numbers in the first-come-first-served
range, all in one block ``0x6267_0000 + n`` ("bg" in the high bytes). A new kind of
value gets a new number; an existing number never changes its meaning.
"""

from __future__ import annotations

from typing import Final

# -- standard tags, written -----------------------------------------------------------------

#: RFC 8949 3.4.1: an RFC 3339 date-time text (aware datetimes whose offset is whole minutes).
DATETIME_TEXT: Final = 0
#: RFC 8949 3.4.3: unsigned and negative bignums (written and read by cbor2 itself).
POSITIVE_BIGNUM: Final = 2
NEGATIVE_BIGNUM: Final = 3
#: RFC 8949 3.4.4: decimal fraction ``[exponent, mantissa]`` (finite decimals but -0).
DECIMAL_FRACTION: Final = 4
#: IANA registry (binary UUID, RFC 4122 4.1.2): a UUID as its 16 bytes.
UUID: Final = 37
#: IANA registry (mathematical finite set): a ``set``, an array of its elements.
SET: Final = 258
#: RFC 8943: a full-date text ``YYYY-MM-DD``.
DATE_TEXT: Final = 1004

# -- standard tags, read but never written ----------------------------------------------

#: RFC 8949 3.4.2: epoch-based date/time (an aware datetime in UTC).
EPOCH_DATETIME: Final = 1
#: RFC 8943: days since 1970-01-01.
EPOCH_DATE: Final = 100

# -- this plugin's own tags -----------------------------------------------------------------

BASE: Final = 0x6267_0000
#: A datetime RFC 3339 cannot write: naive, as ``datetime.isoformat()`` text; or with an
#: offset that is not whole minutes, as ``[naive isoformat() text, offset in microseconds]``
#: (``fromisoformat`` loses an offset under one second: "+00:00:00.5" reads as UTC).
PY_DATETIME: Final = BASE + 1
#: A ``datetime.time``: ``time.isoformat()`` text when naive; with an offset,
#: ``[naive isoformat() text, offset in microseconds]``.
TIME: Final = BASE + 2
#: A ``datetime.timedelta``: ``[days, seconds, microseconds]`` as Python normalises them.
TIMEDELTA: Final = BASE + 3
#: A ``frozenset``: an array of its elements (tag 258 is the mutable ``set``).
FROZENSET: Final = BASE + 4
#: A ``Decimal`` tag 4 cannot carry: -0 (any exponent), infinities, NaN and sNaN with
#: their payloads. Its ``str()`` text.
DECIMAL_TEXT: Final = BASE + 5
#: A ``kit.Opaque`` sealed value: ``[content type, data (bytes), codecs]``.
OPAQUE: Final = BASE + 6
