"""Rate and concurrency limits (gates: the rules of :class:`bgcoor_core.kit.Gate`) in PostgreSQL.

A message keeps its encoded gate in ``messages.gate``. The reserve statement never takes
or touches a gated row it would have to decide: it returns it as a *candidate* (its record
is not marked running), beside the ungated rows it took as always, so a queue without
limits pays nothing for them. (The reserve is one statement outside any transaction,
which commits on its own: deciding the gated rows inside its transaction would cost every
reserve a BEGIN and a COMMIT.) A row the rate already deferred to its slot (``admitted``)
whose gate has no concurrency limit is no candidate: it needs no decision (its slot was
charged when it was deferred) and takes no slot, so the reserve statement takes it once it
is due, as an ungated row, and clears the mark. For the candidates,
:meth:`PostgresGates.step` runs one transaction on the same connection:

1. BEGIN; lock the candidates' key rows (``gate_keys``, inserting the absent ones) in key
   order, so two reservers of overlapping keys never deadlock, and read each key's rate
   state (its theoretical arrival time, ``tat``);
2. lock the candidates that are still waiting (``FOR UPDATE SKIP LOCKED``: another
   reserver may have decided some meanwhile) and count each key's slot holders
   (``reserved`` rows with that ``slot_key`` and a live lease). A statement of its own:
   its snapshot is taken after the key locks, so it shows what the reserver that held
   them before us committed;
3. in Python, :class:`Decisions` applies the rules to the candidates in reserve order,
   with the core's :func:`~bgcoor_core.kit.admit` and the server's clock; when a key
   turns out saturated (a candidate parked or deferred), one more statement locks the
   messages of the same gate waiting behind the candidates, which are decided too (a
   backlog waits a few hundred at a time, not a reserve's worth per round), all at the
   clock that statement reads last (the decisions are made again at it: the later the
   moment a slot counts from, the less its task waits for the write that delivers it);
4. one statement writes the outcome: the passed rows are leased (and their records marked
   running) as the reserve would, started (record and lease) at the moment of their
   decision, each holder with its ``slot_key``; parked ones become
   ``parked`` (out of the reserve's indexes); deferred ones are ready again at their rate
   slot, marked ``admitted`` (neither record is touched); the keys' new ``tat``;
5. COMMIT.

A holder stops holding when its row is settled: ack, nack, dead letter, complete and the
hand-back of a cancelled reserve call ``free_slots`` (a PL/pgSQL function of the schema,
see ``_schema.py``) from their own statement, only when a row they settled had a
``slot_key``; it locks the key and moves its first parked message back to ready. Because
a reserver holds the key's row until it commits, and the function reads the parked rows
in a statement after taking that lock, a message parked by a reserver that counted a
holder being settled just then is always seen and released. A lease that ran out stops
holding at once (holders are counted by live leases); its slot is released (``slot_key``
cleared, one parked message back to ready) by the next step that locks its key, or by
:meth:`PostgresGates.delete_expired`, which also deletes the rows of idle keys.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bgcoor_core.kit import Gate, admit, printable

from ._checks import INT_MAX
from ._database import Conn, Database
from ._sql import BEYOND, ODD_MESSAGE, QUEUED, Statements, numbers, quote_ident, taken_rows, taking

Records = list[asyncpg.Record]
#: Messages waiting behind a saturated key's candidates that one step decides at most,
#: per queue and gate.
BEHIND = 500
#: Kinds of the rows the load statement returns.
_CANDIDATE, _KEY, _LAPSED, _CLOCK = 0, 1, 2, 3


class GateStatements:
    """Built once per schema (see the module docstring)."""

    def __init__(self, sql: Statements) -> None:
        s = quote_ident(sql.schema)
        m, keys = f"{s}.messages", f"{s}.gate_keys"
        # $1 the keys, sorted and distinct: locked in that order, the absent inserted
        self.lock = (
            f"INSERT INTO {keys} AS g (key) SELECT u.key "
            "FROM unnest($1::text[]) WITH ORDINALITY AS u(key, ord) ORDER BY u.ord "
            "ON CONFLICT (key) DO UPDATE SET tat = g.tat RETURNING g.key, g.tat"
        )
        # $1 the candidates' ids, $2 the keys with a concurrency limit. Rows: the
        # candidates still waiting (locked), each key's live holders, the holders of those
        # keys whose leases ran out (locked, to be released), and the clock; columns
        # kind, id, gate, admitted, odd, slot (a lapsed holder's key), held, now
        self.load = (
            "WITH c0 AS MATERIALIZED (SELECT clock_timestamp() AS at), "
            f"c AS (SELECT m.id, m.gate, m.admitted, {ODD_MESSAGE} AS odd, "
            "CASE WHEN m.state = 'reserved' THEN m.slot_key END AS slot "
            f"FROM {m} m, c0 WHERE m.id = ANY($1::text[]) AND {QUEUED} "
            f"AND (available_at <= c0.at OR available_at >= {BEYOND}) "
            "FOR UPDATE OF m SKIP LOCKED), "
            f"lapsed AS (SELECT h.id, h.slot_key FROM {m} h, c0 "
            "WHERE h.slot_key = ANY($2::text[]) AND h.state = 'reserved' "
            "AND h.available_at <= c0.at AND h.id <> ALL($1::text[]) "
            "FOR UPDATE OF h SKIP LOCKED) "
            f"SELECT {_CANDIDATE} AS kind, c.id, c.gate, c.admitted, c.odd, c.slot, "
            "NULL::bigint AS held, NULL::float8 AS now FROM c UNION ALL "
            f"SELECT {_KEY}, k.key, NULL, NULL, NULL, NULL, (SELECT count(*) FROM {m} h "
            "WHERE h.slot_key = k.key AND h.state = 'reserved' AND h.available_at > c0.at), "
            "NULL FROM unnest($2::text[]) AS k(key), c0 UNION ALL "
            f"SELECT {_LAPSED}, l.id, NULL, NULL, NULL, l.slot_key, NULL, NULL FROM lapsed l "
            f"UNION ALL SELECT {_CLOCK}, NULL, NULL, NULL, NULL, NULL, NULL, "
            "extract(epoch FROM c0.at)::float8 FROM c0"
        )
        # $1 lease; taken $2 id, $3 ord, $4 slot key, $5 defect; parked $6 id, $7 key;
        # deferred $8 id, $9 start; $10 lapsed holders; tat $11 key, $12 value;
        # unparked $13 key, $14 how many; $15 the clock the decisions used (epoch
        # seconds): the taken rows' start and the start of their leases, so the records
        # show the moment the rate admitted them (not the apply's later clock). The last
        # row (id NULL) notifies the queues of the unparked messages.
        lost = f"lost = least(m.lost, {INT_MAX - 1}) + (m.state = 'reserved')::int"
        holds = ", slot_key = cand.slot_key, admitted = false"
        self.apply = (
            "WITH cand AS (SELECT * FROM unnest($2::text[], $3::int[], $4::text[], "
            "$5::text[]) AS c(id, ord, slot_key, odd)), "
            f"{taking(s, 'cand', lease='$1', also=holds, start='to_timestamp($15::float8)')}, "
            f"parked AS (UPDATE {m} m SET state = 'parked', token = NULL, slot_key = p.key, "
            f"{lost} FROM unnest($6::text[], $7::text[]) AS p(id, key) WHERE m.id = p.id), "
            f"deferred AS (UPDATE {m} m SET state = 'ready', token = NULL, slot_key = NULL, "
            f"admitted = true, available_at = to_timestamp(d.start::float8), {lost} "
            "FROM unnest($8::text[], $9::text[]) AS d(id, start) WHERE m.id = d.id), "
            f"lapsed AS (UPDATE {m} m SET slot_key = NULL WHERE m.id = ANY($10::text[])), "
            f"rates AS (UPDATE {keys} g SET tat = r.tat::float8 "
            "FROM unnest($11::text[], $12::text[]) AS r(key, tat) WHERE g.key = r.key), "
            f"unparked AS (UPDATE {m} m SET state = 'ready' FROM (SELECT f.id "
            "FROM unnest($13::text[], $14::int[]) AS u(key, n) CROSS JOIN LATERAL ("
            f"SELECT p.id FROM {m} p WHERE p.slot_key = u.key AND p.state = 'parked' "
            "ORDER BY p.priority DESC, p.seq LIMIT u.n FOR UPDATE SKIP LOCKED) f) f "
            "WHERE m.id = f.id RETURNING m.queue) "
            f"{taken_rows(s)} UNION ALL "
            "SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
            f"(SELECT count(*) FROM (SELECT pg_notify('{sql.channel}', d.queue) "
            "FROM (SELECT DISTINCT queue FROM unparked) d) x)::float8, "
            "NULL, NULL, NULL, NULL"
        )
        # the messages waiting behind the candidates: per (queue $1, gate $2, queue's
        # place $3), the ready ones not yet given a rate slot, but the candidates ($4), in
        # ready order, $5 at most each (locked: another reserver leaves them alone); then
        # a row (id NULL) with the clock, read once they are all locked (the count needs
        # them all first): the step's decisions use it (see PostgresGates.step)
        self.behind = (
            "WITH b AS MATERIALIZED (SELECT f.id, u.gate, u.ord, f.priority, f.seq "
            "FROM unnest($1::text[], $2::text[], $3::int[]) AS u(queue, gate, ord) "
            f"CROSS JOIN LATERAL (SELECT m.id, m.priority, m.seq FROM {m} m "
            "WHERE m.queue = u.queue AND m.gate = u.gate AND m.state = 'ready' "
            "AND NOT m.admitted AND m.available_at <= clock_timestamp() "
            "AND m.id <> ALL($4::text[]) "
            "ORDER BY m.priority DESC, m.seq LIMIT $5 FOR UPDATE SKIP LOCKED) f) "
            "SELECT b.id, b.gate, b.ord, b.priority, b.seq, NULL::float8 AS now FROM b "
            "UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, "
            "extract(epoch FROM clock_timestamp())::float8 FROM (SELECT count(*) FROM b) n"
        )
        # idle keys' rows (no rate state in the future), a chunk at a time ($1); a row
        # a reserver holds is skipped
        self.sweep_keys = (
            f"DELETE FROM {keys} g WHERE g.key IN (SELECT k.key FROM {keys} k "
            "WHERE k.tat IS NULL OR k.tat <= extract(epoch FROM clock_timestamp()) "
            "LIMIT $1 FOR UPDATE SKIP LOCKED)"
        )
        # holders whose leases ran out, released ($1 at most): what no step of their
        # keys has released yet (a worker that died, its queue consumed by nobody)
        self.sweep_lapsed = (
            f"WITH old AS (SELECT h.id, h.slot_key FROM {m} h WHERE h.state = 'reserved' "
            "AND h.slot_key IS NOT NULL AND h.available_at <= clock_timestamp() "
            "LIMIT $1 FOR UPDATE SKIP LOCKED), "
            f"lapsed AS (UPDATE {m} m SET slot_key = NULL FROM old WHERE m.id = old.id "
            "RETURNING old.slot_key) "
            f"SELECT (SELECT count(*) FROM lapsed), (SELECT {s}.free_slots(("
            f"SELECT array_agg(l.slot_key) FROM lapsed l), '{sql.channel}'))"
        )
        # parked messages nothing would release (written by something else): one without
        # a key goes back to ready; a key with parked messages and no live holder at all
        # has a free slot, and its first parked message goes back to ready (a spare one
        # parks again: its reserve still counts the slots)
        self.sweep_parked = (
            f"WITH strays AS (UPDATE {m} m SET state = 'ready' WHERE m.state = 'parked' "
            "AND m.slot_key IS NULL RETURNING m.queue), "
            f"orphans AS (SELECT DISTINCT p.slot_key FROM {m} p WHERE p.state = 'parked' "
            f"AND p.slot_key IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {m} h "
            "WHERE h.slot_key = p.slot_key AND h.state = 'reserved' "
            "AND h.available_at > clock_timestamp())) "
            f"SELECT (SELECT count(*) FROM (SELECT pg_notify('{sql.channel}', d.queue) "
            "FROM (SELECT DISTINCT queue FROM strays) d) x), "
            f"(SELECT {s}.free_slots((SELECT array_agg(o.slot_key) FROM orphans o), "
            f"'{sql.channel}'))"
        )


# -- the rules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A gated message the reserve returned, as the load statement found it locked."""

    id: str
    ord: int
    #: ``None``: taken as it is (no gate any more, or ``defect``).
    gate: Gate | None
    #: Why the row cannot be trusted (its bookkeeping, or its gate): delivered as a
    #: defect, which the executor dead-letters; it takes no slot.
    defect: str | None = None
    admitted: bool = False
    #: The key whose slot this row held under a lease that ran out, if any.
    lapsed: str | None = None
    #: The gate as stored (what finds the messages waiting behind it).
    encoded: str | None = None


@dataclass(slots=True)
class Plan:
    """What one gate step writes."""

    #: (id, ord, slot key or None, defect or None)
    take: list[tuple[str, int, str | None, str | None]] = field(default_factory=list)
    park: list[tuple[str, str]] = field(default_factory=list)
    defer: list[tuple[str, float]] = field(default_factory=list)
    #: Non-candidate holders whose leases ran out: their slot is released.
    lapsed: list[str] = field(default_factory=list)
    tats: dict[str, float] = field(default_factory=dict)
    unpark: Counter[str] = field(default_factory=Counter)


class Decisions:
    """The gate rules (see :class:`bgcoor_core.kit.Gate`) applied by one gate step, in
    reserve order, on the keys' live holder counts ``held``, rate states ``tats`` and the
    clock ``now``, which its decisions change as they go.

    ``lapsed``: (id, key) of holders whose leases ran out (not candidates). Each such
    slot, and each candidate's own lapsed one, is released by :meth:`plan`: a parked
    message of its key goes back to ready, as many as the slots left free once the
    candidates took theirs (when a candidate took the slot, or parked, nothing waiting
    could have had it).
    """

    def __init__(
        self,
        held: dict[str, int],
        tats: dict[str, float | None],
        now: float,
        lapsed: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.now = now
        self._plan = Plan(lapsed=[i for i, _ in lapsed])
        self._held = dict(held)
        self._rates = dict(tats)
        self._limits: dict[str, int] = {}
        self._freed: Counter[str] = Counter(key for _, key in lapsed)
        #: Keys of which a message was parked or deferred: the messages waiting behind
        #: it would most likely wait too (see :meth:`wait`).
        self.saturated: set[str] = set()

    def judge(self, c: Candidate) -> None:
        """Decide a candidate: taken (a defect, or it passed), parked or deferred."""
        if c.lapsed is not None:
            self._freed[c.lapsed] += 1
        gate = c.gate
        if gate is None:
            self._plan.take.append((c.id, c.ord, None, c.defect))
        elif not self._waits(c.id, gate, admitted=c.admitted, spend=True):
            slot = None
            if gate.concurrency is not None:
                self._held[gate.key] = self._held.get(gate.key, 0) + 1
                slot = gate.key
            self._plan.take.append((c.id, c.ord, slot, None))

    def wait(self, message_id: str, gate: Gate) -> bool:
        """A message waiting behind the candidates (never admitted): parked or deferred
        as the candidate before it was, True; False when it would pass, and then nothing
        changed (it is left for a reserve to take in its turn)."""
        return self._waits(message_id, gate, admitted=False, spend=False)

    def _waits(self, message_id: str, gate: Gate, *, admitted: bool, spend: bool) -> bool:
        """Concurrency first (a parked message spends no rate slot), then the rate (an
        admitted message passes once): True, parked or deferred; False, it passes, its
        rate slot spent only if ``spend``."""
        key = gate.key
        if gate.concurrency is not None:
            self._limits[key] = gate.concurrency
            if self._held.get(key, 0) >= gate.concurrency:
                self._plan.park.append((message_id, key))
                self.saturated.add(key)
                return True
        if gate.interval is not None and not admitted:
            tat, start = admit(self._rates.get(key), self.now, gate.interval, gate.burst)
            if start <= self.now and not spend:
                return False
            self._rates[key] = self._plan.tats[key] = tat
            if start > self.now:
                self._plan.defer.append((message_id, start))
                self.saturated.add(key)
                return True
        return False

    def plan(self) -> Plan:
        """The decisions, with the parked messages the lapsed slots release."""
        plan = self._plan
        for key, n in self._freed.items():
            limit = self._limits.get(key)
            free = n if limit is None else min(n, limit - self._held.get(key, 0))
            if free > 0:
                plan.unpark[key] = free
        return plan


def parse_gate(text: str) -> Gate | str:
    """The gate a message carries, or why it cannot be one (a defect of its message)."""
    try:
        gate = Gate.decode(text)
    except (ValueError, TypeError):
        gate = None
    if gate is not None and (
        gate.key
        and gate.burst >= 1
        and (gate.concurrency is None or gate.concurrency >= 1)
        and (gate.interval is None or (math.isfinite(gate.interval) and gate.interval > 0))
    ):
        return gate
    return f"gate = {printable(repr(text), 80)}"


# -- the step ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Loaded:
    """What the load statement found (see :attr:`GateStatements.load`)."""

    rows: dict[str, asyncpg.Record] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    lapsed: list[tuple[str, str]] = field(default_factory=list)
    now: float = 0.0

    @classmethod
    def of(cls, records: Records) -> _Loaded:
        loaded = cls()
        for row in records:
            kind = row["kind"]
            if kind == _CANDIDATE:
                loaded.rows[row["id"]] = row
            elif kind == _KEY:
                loaded.held[row["id"]] = row["held"]
            elif kind == _LAPSED:
                loaded.lapsed.append((row["id"], row["slot"]))
            else:
                loaded.now = row["now"]
        return loaded


class PostgresGates:
    """The gate step of a :class:`PostgresBackend` (see the module docstring)."""

    def __init__(self, db: Database, sql: Statements) -> None:
        self._db = db
        self.sql = GateStatements(sql)

    async def step(
        self, conn: Conn, candidates: Sequence[asyncpg.Record], queues: Sequence[str], lease: float
    ) -> Stepped:
        """Decide the gated ``candidates`` (reserve rows of ``queues``, in reserve order)
        in one transaction; the rows it leased, as the reserve returns them, and the keys
        it found saturated.

        When a key turned out saturated (a candidate parked or deferred), the messages of
        the same gate waiting behind the candidates in their queues are decided too, up
        to :data:`BEHIND` each, in the same transaction (one more statement): a backlog
        behind a limit is parked or scheduled a few hundred at a time, instead of a
        reserve's worth per round.

        The decisions use the server's clock as late as the step reads it: the load's,
        or, when the backlog is fetched, the clock that statement reads once it has
        locked the backlog (the candidates are judged again at it). A rate slot is
        counted from the moment of its decision, and the apply (which writes that moment
        as the leased rows' start) and the commit follow it at once: what a task admitted
        at once waits between its decision and its delivery is only that."""
        gates = {row["id"]: parse_gate(row["gate"]) for row in candidates}
        keys = sorted({g.key for g in gates.values() if isinstance(g, Gate)})
        slotted = sorted(
            {g.key for g in gates.values() if isinstance(g, Gate) and g.concurrency is not None}
        )
        async with conn.transaction(isolation="read_committed"):
            tats: dict[str, float | None] = {}
            if keys:
                tats = {key: tat for key, tat in await conn.fetch(self.sql.lock, keys)}
            ids = [row["id"] for row in candidates]
            loaded = _Loaded.of(await conn.fetch(self.sql.load, ids, slotted))
            found = [_candidate(row, loaded, keys) for row in candidates]
            chosen = [c for c in found if c is not None]
            if not chosen and not loaded.lapsed:
                return Stepped([], set())  # all decided by another reserver meanwhile
            decisions = _judged(loaded, tats, chosen, loaded.now)
            if decisions.saturated:
                decisions = await self._behind(conn, decisions, loaded, tats, chosen, queues, ids)
            plan = decisions.plan()
            rows = await conn.fetch(self.sql.apply, lease, *_apply_columns(plan), decisions.now)
        return Stepped([row for row in rows if row["id"] is not None], decisions.saturated)

    async def _behind(
        self,
        conn: Conn,
        first: Decisions,
        loaded: _Loaded,
        tats: dict[str, float | None],
        chosen: Sequence[Candidate],
        queues: Sequence[str],
        ids: Sequence[str],
    ) -> Decisions:
        """Lock the messages waiting behind the candidates of the keys that ``first``
        (the candidates judged at the load's clock) found saturated, and decide all again
        at the clock read after them: the candidates, then those, per key until one
        would pass."""
        gates = {
            c.encoded: c.gate
            for c in chosen
            if c.gate is not None and c.encoded is not None and c.gate.key in first.saturated
        }
        pairs = sorted({(c.ord, c.encoded) for c in chosen if c.encoded in gates})
        rows = await conn.fetch(
            self.sql.behind,
            [queues[o - 1] for o, _ in pairs],
            [text for _, text in pairs],
            [o for o, _ in pairs],
            list(ids),
            BEHIND,
        )
        now = max([loaded.now, *(row["now"] for row in rows if row["id"] is None)])
        decisions = _judged(loaded, tats, chosen, now)
        waiting = sorted((row for row in rows if row["id"] is not None), key=_in_queue_order)
        stopped: set[str] = set()
        for row in waiting:
            gate = gates[row["gate"]]
            if gate.key not in stopped and not decisions.wait(row["id"], gate):
                stopped.add(gate.key)
        return decisions

    async def delete_expired(self) -> int:
        """Release holders whose leases ran out that no step released, and parked
        messages nothing would release, then delete the rows of idle keys (in chunks of
        1,000); how many key rows went."""
        while True:
            lapsed = await self._db.run(lambda c: c.fetchval(self.sql.sweep_lapsed, 1000))
            if lapsed < 1000:
                break
        await self._db.run(lambda c: c.execute(self.sql.sweep_parked))
        deleted = 0
        while True:
            status = await self._db.run(lambda c: c.execute(self.sql.sweep_keys, 1000))
            count = int(status.rsplit(" ", 1)[-1])
            deleted += count
            if count < 1000:
                return deleted


@dataclass(frozen=True, slots=True)
class Stepped:
    """What a gate step did: the rows it leased (as the reserve returns them), and the
    keys it found saturated (a candidate parked or deferred)."""

    rows: Records
    saturated: set[str]


def _judged(
    loaded: _Loaded, tats: dict[str, float | None], chosen: Sequence[Candidate], now: float
) -> Decisions:
    """The candidates decided in reserve order at the clock ``now``."""
    decisions = Decisions(loaded.held, tats, now, loaded.lapsed)
    for candidate in chosen:
        decisions.judge(candidate)
    return decisions


def _in_queue_order(row: asyncpg.Record) -> tuple[int, int, int]:
    """A waiting message's place: its queue's place in the reserve, priority, FIFO."""
    return row["ord"], -row["priority"], row["seq"]


def _candidate(row: asyncpg.Record, loaded: _Loaded, keys: Sequence[str]) -> Candidate | None:
    """The candidate ``row`` (a reserve row) as the load found it, or ``None`` when it is
    no longer waiting (another reserver decided it, or holds it locked) or names a key
    this step did not lock (it was replaced by another message of the same id)."""
    found = loaded.rows.get(row["id"])
    if found is None:
        return None
    text, odd = found["gate"], found["odd"]
    gate = None if text is None else parse_gate(text)
    if isinstance(gate, Gate) and gate.key not in keys:
        return None
    lapsed = found["slot"]
    if odd is not None or isinstance(gate, str):
        return Candidate(row["id"], row["ord"], None, odd or str(gate), lapsed=lapsed)
    return Candidate(row["id"], row["ord"], gate, None, found["admitted"], lapsed, text)


def _apply_columns(plan: Plan) -> list[Any]:
    take, park, defer = plan.take, plan.park, plan.defer
    return [
        [t[0] for t in take],
        [t[1] for t in take],
        [t[2] for t in take],
        [t[3] for t in take],
        [p[0] for p in park],
        [p[1] for p in park],
        [d[0] for d in defer],
        numbers(d[1] for d in defer),
        plan.lapsed,
        list(plan.tats),
        numbers(plan.tats.values()),
        list(plan.unpark),
        list(plan.unpark.values()),
    ]
