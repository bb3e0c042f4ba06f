"""Rate and concurrency limits (:mod:`bgcoor_core._gates`) in the reserve's own transaction.

The reserve runs under ``BEGIN IMMEDIATE``, which holds the file's write lock from the
first read: counting a key's holders, reading and storing its rate state, and taking or
holding back the message are one step for every process sharing the file, so two workers
can never both take a key's last slot. A message without a gate never reaches this module.

The columns (schema version 7): ``gate`` is the encoded :class:`Gate`, stored as pushed;
``slot_key`` the key whose concurrency slot the message takes, written by the take (and the
park) from the gate (``NULL`` without a concurrency limit). So the holders of a key are its
*leased* rows whose lease is current: a settle, a hand-back or a lost lease ends a holding
by changing the row itself, and then makes the key's first parked message ready
(:func:`release`; a lost lease, when the reserve takes its row again). ``slot_wait`` is set
while the message is parked (a ``ready`` row that the take index leaves out, so a reserve
never reads it); ``admitted`` while it holds a rate slot due at its ``available_at``.
``gate_rates`` holds each key's theoretical arrival time, dropped once it has passed.

A message held back is only moved: its record is not touched (still ``pending``, its
attempts unchanged) and its delivery counters are not counted up.
"""

from __future__ import annotations

import math
import sqlite3

from ..._gates import Gate, admit

_HOLDERS = (
    "SELECT count(*) FROM messages WHERE slot_key = ? AND state = 'reserved' AND available_at > ?"
)
# the key's first parked message in ready order (priority, then FIFO) is ready again
_UNPARK = (
    "UPDATE messages SET slot_wait = 0 WHERE rowid = (SELECT rowid FROM messages "
    "WHERE slot_wait != 0 AND slot_key = ? ORDER BY priority DESC, seq, id LIMIT 1)"
)
_PARK = (
    "UPDATE messages SET state = 'ready', token = NULL, slot_wait = 1, slot_key = ?, lost = ? "
    "WHERE rowid = ?"
)
_DEFER = (
    "UPDATE messages SET state = 'ready', token = NULL, available_at = ?, admitted = 1, "
    "lost = ? WHERE rowid = ?"
)
_TAT = "SELECT tat FROM gate_rates WHERE key = ?"
_STORE_TAT = (
    "INSERT INTO gate_rates (key, tat) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET tat = excluded.tat"
)
# Parked messages whose key has no live holder: no settle will free them (the holders'
# leases ran out in a queue nobody reserves from, or the row was written by something else).
_STRANDED = (
    "FROM messages AS w WHERE w.slot_wait != 0 AND NOT EXISTS (SELECT 1 FROM messages AS h "
    "WHERE h.slot_key = w.slot_key AND h.state = 'reserved' AND h.available_at > ?)"
)
ANY_STRANDED = f"SELECT 1 {_STRANDED} LIMIT 1"
_FREE_STRANDED = f"UPDATE messages SET slot_wait = 0 WHERE rowid IN (SELECT w.rowid {_STRANDED})"


def parse(text: object) -> Gate | None:
    """The gate a ``gate`` column holds, or ``None`` if it holds none that can be enforced
    (written by something else): the reserve then hands the message over as a defect."""
    if not isinstance(text, str):
        return None
    try:
        gate = Gate.decode(text)
    except ValueError:
        return None
    if not gate.key or gate.burst < 1:
        return None
    if gate.interval is not None and not (math.isfinite(gate.interval) and gate.interval > 0):
        return None
    if gate.concurrency is not None and gate.concurrency < 1:
        return None
    return gate


def slot_of(gate: Gate | None) -> str | None:
    """The ``slot_key`` a message taken with ``gate`` holds: set by each take (and park)
    from the gate itself, so only the reserve decodes gates and a push stores the text."""
    return gate.key if gate is not None and gate.concurrency is not None else None


def passes(
    conn: sqlite3.Connection,
    rowid: int,
    gate: Gate,
    *,
    lost: bool,
    lost_count: int,
    admitted: bool,
    now: float,
) -> bool:
    """The gate's rules for one candidate row (inside the reserve's transaction): True when
    it may be taken now (it then holds a slot once the caller leases it), else it was parked
    or given its rate slot and scheduled for it. ``lost``: the row's lease had run out, so
    the slot it held is released first; ``lost_count`` is its ``lost`` counter counted up
    for that, kept whether it is taken or held back."""
    if gate.concurrency is not None:
        if lost:
            release(conn, gate.key)
        holders: int = conn.execute(_HOLDERS, (gate.key, now)).fetchone()[0]
        if holders >= gate.concurrency:
            conn.execute(_PARK, (gate.key, lost_count, rowid))
            return False
    if gate.interval is not None and not admitted:
        row = conn.execute(_TAT, (gate.key,)).fetchone()
        tat, start = admit(None if row is None else row[0], now, gate.interval, gate.burst)
        conn.execute(_STORE_TAT, (gate.key, tat))
        if start > now:
            conn.execute(_DEFER, (start, lost_count, rowid))
            return False
    return True


def release(conn: sqlite3.Connection, key: object) -> bool:
    """A holder of ``key`` stopped holding (inside the caller's transaction): the key's
    first parked message is ready again. True if there was one (consumers may be woken).
    ``key`` is the ``slot_key`` column as settles read it, as bytes (``NULL``: no slot)."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    if not isinstance(text, str):
        return False
    return conn.execute(_UNPARK, (text,)).rowcount > 0


def free_stranded(conn: sqlite3.Connection, now: float) -> int:
    """Make ready again every parked message whose key has no live holder (inside a
    transaction); each goes through its gate again. Run by the idle sweep, seldom."""
    return conn.execute(_FREE_STRANDED, (now,)).rowcount


def forget_idle(conn: sqlite3.Connection, now: float) -> int:
    """Drop the rate state of keys whose theoretical arrival time has passed: an idle key
    admits at once whether its row exists or not, so rows never pile up for old keys."""
    return conn.execute("DELETE FROM gate_rates WHERE tat <= ?", (now,)).rowcount
