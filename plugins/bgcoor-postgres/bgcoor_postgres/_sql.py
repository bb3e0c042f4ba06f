"""Every statement the backend runs, built once per schema.

Each one is a single round trip. Batches travel as arrays expanded with ``unnest``;
several steps that must happen together are data-modifying CTEs of one statement, which
PostgreSQL runs as one atomic unit.
"""

from __future__ import annotations

from collections.abc import Iterable

from bgcoor_core import ALLOWED_TRANSITIONS, FROM_UNKNOWN_STATUS, Message, TaskStatus

from ._checks import INT_MAX


def numbers(values: Iterable[float | None]) -> list[str | None]:
    """Floats as text for a ``text[]`` parameter (``repr`` round-trips exactly)."""
    return [None if v is None else repr(float(v)) for v in values]


def gated(messages: Iterable[Message]) -> bool:
    """Whether a message of the batch has a gate: its enqueue is the ``_gated`` twin."""
    return any(m.gate is not None for m in messages)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _in(statuses: Iterable[TaskStatus]) -> str:
    return "(" + ", ".join(sorted(f"'{status.value}'" for status in statuses)) + ")"


#: Every known status as an SQL list: a stored status outside it was written by something
#: else (see ``FROM_UNKNOWN_STATUS``).
KNOWN = _in(TaskStatus)


def announce(channel: str) -> str:
    """A ``RETURNING`` item of a statement that writes records (``t``): each one written
    final is announced on ``channel`` with its id, at commit (``result()`` waits for it,
    see ``_listener.py``). A data-modifying CTE computes its ``RETURNING`` list for every
    row it writes, whether or not the rest of the statement reads it."""
    final = _in(status for status in TaskStatus if status.is_final)
    return f"CASE WHEN t.status IN {final} THEN pg_notify('{channel}', t.id) END AS told"


def _allowed_pairs() -> str:
    """``ALLOWED_TRANSITIONS`` as SQL row literals, generated so the two never diverge."""
    pairs = sorted(
        (old.value, new.value) for old, news in ALLOWED_TRANSITIONS.items() for new in news
    )
    return ", ".join(f"('{old}', '{new}')" for old, new in pairs)


def write_allowed(old: str, new: str) -> str:
    """SQL twin of :func:`bgcoor_core.check_write` for ``old`` (stored) and ``new`` rows.

    An expired record counts as absent; otherwise the lease-token rule and the allowed
    transitions both have to hold. A stored status that names no status may only become
    one of ``FROM_UNKNOWN_STATUS`` (``dead``: a worker's verdict on a corrupt record).
    """
    running = TaskStatus.RUNNING.value
    return (
        f"(({old}.expires_at IS NOT NULL AND {old}.expires_at <= clock_timestamp()) OR "
        f"(({new}.lease_token IS NULL OR {new}.status = '{running}' "
        f"OR {old}.lease_token IS NOT DISTINCT FROM {new}.lease_token) "
        f"AND (({old}.status, {new}.status) IN ({_allowed_pairs()}) "
        f"OR ({old}.status NOT IN {KNOWN} AND {new}.status IN {_in(FROM_UNKNOWN_STATUS)}))))"
    )


LIVE = "(t.expires_at IS NULL OR t.expires_at > clock_timestamp())"
#: ``synchronous_commit = off`` for the current transaction only. Used where losing the
#: last moments of writes to a server crash is harmless: a forgotten lease or "running"
#: mark means the task is delivered again (at-least-once), never lost. Enqueues and
#: outcomes always wait for the WAL flush.
RELAX = "(SELECT set_config('synchronous_commit', 'off', true)) AS relax"
HELD = "m.state = 'reserved' AND m.available_at > clock_timestamp()"
#: Messages the reserve looks at: the predicate of its indexes, which leave out dead
#: letters and messages parked for a concurrency slot.
QUEUED = "state IN ('ready', 'reserved')"
SECONDS = "* interval '1 second'"
#: No time we write reaches this: etas end with year 9999, leases are at most a day. A
#: message due later (up to 'infinity') was written by something else; the reserve takes
#: it as a defect rather than let it wait forever.
BEYOND = "'10000-01-01 00:00:00+00'::timestamptz"
#: Why a message's bookkeeping cannot be trusted, or NULL: evaluated by the reserve for
#: the rows it takes only. A counter at the integer maximum would make the reserve's own
#: "+ 1" fail the statement for every task in it, so the reserve saturates counters and
#: reports the row instead.
ODD_MESSAGE = (
    f"CASE WHEN deliveries NOT BETWEEN 0 AND {INT_MAX - 1} THEN 'deliveries = ' || deliveries "
    f"WHEN lost NOT BETWEEN 0 AND {INT_MAX - 1} THEN 'lost = ' || lost "
    f"WHEN available_at >= {BEYOND} THEN 'available_at = ' || available_at END"
)

# unnest() column lists: the arrays travel as parameters $1..$n in this order. Floats
# travel as text[] (see :func:`numbers`): asyncpg has a built-in codec for text[] only and
# looks other array types up once per new connection (bytea[] and int[] share one look-up).
_MESSAGE_COLUMNS = "$1::text[], $2::text[], $3::int[], $4::bytea[], $5::text[]"
#: Records stored by an enqueue (or ``save_many``) must be new: only an expired record,
#: which counts as absent, is overwritten; any other refuses the whole statement with
#: ``refuse()`` naming the id and the status found (``DuplicateTaskError``).
_NEW_RECORD_UPSERT = (
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, queue = excluded.queue, "
    "status = excluded.status, lease_token = excluded.lease_token, expires_at = NULL, "
    "record = excluded.record, started_at = NULL, before_status = NULL, before_token = NULL "
    "WHERE t.expires_at IS NOT NULL AND t.expires_at <= clock_timestamp()"
)
_RECORD_UPSERT = (
    "ON CONFLICT (id) DO UPDATE SET name = excluded.name, queue = excluded.queue, "
    "status = excluded.status, lease_token = excluded.lease_token, "
    "expires_at = excluded.expires_at, record = excluded.record, started_at = NULL, "
    "before_status = NULL, before_token = NULL "
    "WHERE {allowed}"
)


_RUNNING = TaskStatus.RUNNING.value
#: The statuses a record may become running from, as an SQL list.
_TO_RUNNING = ", ".join(
    f"'{old.value}'" for old, news in ALLOWED_TRANSITIONS.items() if TaskStatus.RUNNING in news
)


def taking(
    schema: str,
    source: str,
    *,
    lease: str,
    where: str = "",
    also: str = "",
    start: str = "clock_timestamp()",
) -> str:
    """The CTEs that lease messages: ``taken``, the rows named by ``source`` (a CTE or
    alias with ``id``, ``ord`` and ``odd``; ``where``: more conditions), each given a
    fresh token, the lease deadline ``lease`` seconds after ``start`` (the moment of the
    delivery: now, or the gate step's admission moment), one more delivery and one more
    lost delivery if its previous lease had expired (``also``: more assignments); and
    ``marked``, their records marked running, started at ``start``. Shared by the reserve
    and the gate step (``schema`` quoted)."""
    m, t = f"{schema}.messages", f"{schema}.tasks"
    return (
        f"taken AS (UPDATE {m} m SET state = 'reserved', token = gen_random_uuid()::text, "
        f"available_at = {start} + {lease} {SECONDS}, "
        f"deliveries = least(m.deliveries, {INT_MAX - 1}) + 1, "
        f"lost = least(m.lost, {INT_MAX - 1}) + (m.state = 'reserved')::int{also} "
        f"FROM {source} WHERE m.id = {source}.id{where} "
        f"RETURNING m.id, m.queue, m.body, m.deliveries, m.lost, m.token, {source}.ord, "
        f"m.priority, m.seq, {source}.odd, m.gate), "
        # the taken tasks' records are marked running here (Reservation.started), saving
        # the executor's own write; a record in a status that may not become running,
        # or an absent one, is left to the executor. The JSON is not touched (jsonb would
        # refuse a \u0000 in it, and reprint numbers): reads apply started_at (see
        # _records.decode). After a start whose worker was lost, the before_* columns
        # keep what the record was before that one.
        f"marked AS (UPDATE {t} t SET status = '{_RUNNING}', lease_token = k.token, "
        f"expires_at = NULL, started_at = {start}, "
        "before_status = CASE WHEN t.started_at IS NULL THEN t.status "
        "ELSE t.before_status END, "
        "before_token = CASE WHEN t.started_at IS NULL THEN t.lease_token "
        "ELSE t.before_token END FROM taken k "
        f"WHERE t.id = k.id AND {LIVE} AND t.status IN ({_TO_RUNNING}) "
        "RETURNING t.id, t.started_at)"
    )


def taken_rows(schema: str) -> str:
    """The ``SELECT`` of what :func:`taking` leased, a row per message as
    ``PostgresBackend._reservation`` reads it (``schema`` quoted). A leased row's gate
    comes back with it (a token beside it: not a candidate), so a gate that cannot be
    read makes it a defect wherever it was leased."""
    return (
        "SELECT k.id, k.queue, k.body, k.deliveries, k.lost, k.token, k.ord, k.priority, "
        "k.seq, NULL::float8 AS due, "
        # the start a marked record holds (Reservation.started_at), as reads apply it
        "extract(epoch FROM marked.started_at)::float8 AS started, k.odd, "
        # only a record the reserve did not mark running is looked up again (a
        # correlated lookup by id, skipped by the CASE for every marked one)
        "CASE WHEN marked.id IS NULL THEN (SELECT r.status FROM "
        f"{schema}.tasks r WHERE r.id = k.id AND r.status NOT IN {KNOWN} "
        "AND (r.expires_at IS NULL OR r.expires_at > clock_timestamp())) END AS odd_status, "
        "k.gate FROM taken k LEFT JOIN marked USING (id)"
    )


class Statements:
    """SQL for one schema, e.g. ``Statements("bgcoor").reserve``."""

    def __init__(self, schema: str, *, fast_lease_commits: bool = True) -> None:
        s = quote_ident(schema)
        # joined into lease-only statements: their commit does not wait for the WAL flush
        relax = f" CROSS JOIN {RELAX}" if fast_lease_commits else ""
        self.schema = schema
        self.channel = f"{schema}_wake"
        #: Each record written final is announced here (payload: its id): ``result()``
        #: waits for it (see ``_listener.py``).
        self.done_channel = f"{schema}_done"
        m, t, q = f"{s}.messages", f"{s}.tasks", f"{s}.queues"
        upsert = _RECORD_UPSERT.format(allowed=write_allowed("t", "excluded"))
        notify = f"SELECT count(*) FROM (SELECT pg_notify('{self.channel}', d.queue) FROM "

        # -- producing -----------------------------------------------------------------
        # Every enqueue has a twin for batches in which a message has a gate (a rate or
        # concurrency limit): the same statement with the gates as its last parameter.
        # A batch without one runs the statement as it was before gates existed.
        def messages(gates: int | None) -> str:
            gate = "" if gates is None else f", ${gates}::text[]"
            column = "" if gates is None else ", gate"
            return (
                f"new_m AS (SELECT * FROM unnest({_MESSAGE_COLUMNS}{gate}) WITH ORDINALITY "
                f"AS n(id, queue, priority, body, eta{column}, ord)), "
                f"ins AS (INSERT INTO {m} (id, queue, priority, body, available_at{column}) "
                "SELECT id, queue, priority, body, "
                f"coalesce(to_timestamp(eta::float8), clock_timestamp()){column} "
                "FROM new_m ORDER BY ord RETURNING queue), "
                f"named AS (INSERT INTO {q} (name) SELECT DISTINCT queue FROM new_m "
                "ON CONFLICT DO NOTHING) "
            )

        self.push = f"WITH {messages(None)}{notify}(SELECT DISTINCT queue FROM ins) d) x"
        self.push_gated = f"WITH {messages(6)}{notify}(SELECT DISTINCT queue FROM ins) d) x"
        # records $6..$11 beside the messages $1..$5 (and their gates, $12); a refused
        # record aborts everything
        enqueue = (
            f"WITH {_new_records(t, 6)}, {{messages}}"
            # messages first: a duplicate id is DuplicateTaskError before any refusal
            f"SELECT ({notify}(SELECT DISTINCT queue FROM ins) d) x), "
            f"({_refuse_existing(s, t)})"
        )
        self.enqueue = enqueue.replace("{messages}", messages(None))
        self.enqueue_gated = enqueue.replace("{messages}", messages(12))
        # save_many: the same for records alone, $1..$6
        self.save_new = f"WITH {_new_records(t, 1)} SELECT ({_refuse_existing(s, t)})"

        # -- consuming -----------------------------------------------------------------
        # A row that cannot be trusted is taken like any other and returned with what is
        # wrong (odd, or the unknown status of its record): the executor dead-letters it,
        # and one bad row never fails the statement that carries the good ones. A row
        # with a gate (a rate or concurrency limit) is neither taken nor touched: it comes
        # back as a candidate (its gate in the last column) for the gate step, which
        # decides it under its key's lock (see _gates.py). But for one that the rate
        # admitted already (deferred to its slot, now due), whose gate has no concurrency
        # limit (the third field, '-'): it needs neither the key's lock nor a slot (its
        # rate slot was charged when it was deferred), and is taken here as it falls due,
        # its mark cleared (a retry is charged again). Ungated rows pay an IS NULL.
        passes = " AND (cand.gate IS NULL OR cand.passes)"
        # (what the reserve leases holds no concurrency slot: a slot_key there was
        # written by something else)
        cleared = ", admitted = false, slot_key = NULL"
        self.reserve = (
            "WITH cand AS (SELECT c.id, w.ord, c.priority, c.seq, c.odd, c.gate, "
            "c.gate IS NOT NULL AND c.admitted AND split_part(c.gate, ' ', 3) = '-' AS passes "
            "FROM unnest($1::text[]) WITH ORDINALITY AS w(name, ord) CROSS JOIN LATERAL ("
            f"SELECT id, priority, seq, {ODD_MESSAGE} AS odd, gate, admitted FROM {m} "
            f"WHERE queue = w.name AND {QUEUED} "
            f"AND (available_at <= clock_timestamp() OR available_at >= {BEYOND}) "
            "ORDER BY priority DESC, seq LIMIT $2 "
            "FOR UPDATE SKIP LOCKED) c ORDER BY w.ord, c.priority DESC, c.seq LIMIT $2), "
            f"{taking(s, 'cand', lease='$3', where=passes, also=cleared)} "
            f"{taken_rows(s)}{relax} UNION ALL "
            # the gated candidates, untouched
            "SELECT c.id, NULL, NULL, NULL, NULL, NULL, c.ord, c.priority, c.seq, NULL, NULL, "
            "c.odd, NULL, c.gate FROM cand c WHERE c.gate IS NOT NULL AND NOT c.passes UNION ALL "
            # no candidate: how long until the earliest eta or lease deadline (clamped to
            # a day either way: an infinite timestamp cannot be subtracted)
            "SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
            "(SELECT extract(epoch FROM min(greatest(least(f.at, "
            "clock_timestamp() + interval '1 day'), clock_timestamp() - interval '1 day')) "
            "- clock_timestamp())::float8 "
            "FROM unnest($1::text[]) AS w(name) CROSS JOIN LATERAL ("
            f"SELECT available_at AS at FROM {m} WHERE queue = w.name AND {QUEUED} "
            "ORDER BY available_at LIMIT 1) f), NULL, NULL, NULL, NULL "
            "WHERE NOT EXISTS (SELECT 1 FROM cand)"
        )

        def free(settled: str) -> str:
            """Frees the slots the ``settled`` rows held (those with a ``slot_key``): a
            call only when one of them had a concurrency limit (STRICT on NULL), and
            once per statement (an uncorrelated sub-select), not once per row."""
            return (
                f"(SELECT {s}.free_slots((SELECT array_agg(x.slot_key) FROM {settled} x "
                f"WHERE x.slot_key IS NOT NULL), '{self.channel}'))"
            )

        # a hand-back (release, or nack) restores a record the reserve marked running
        unstart = (
            # (a before_status that went missing: the status the JSON shows, which is what
            # reads show once started_at is cleared; status is NOT NULL)
            f"unstarted AS (UPDATE {t} t SET "
            "status = coalesce(t.before_status, t.record->>'status', t.status), "
            "lease_token = t.before_token, started_at = NULL, before_status = NULL, "
            "before_token = NULL FROM back WHERE t.id = back.id AND t.lease_token = back.token "
            f"AND t.status = '{_RUNNING}' AND t.started_at IS NOT NULL) "
        )
        self.release = (
            f"WITH back AS (UPDATE {m} m SET state = 'ready', token = NULL, "
            "available_at = clock_timestamp(), deliveries = m.deliveries - 1 "
            "FROM unnest($1::text[], $2::text[]) AS r(id, token) "
            "WHERE m.id = r.id AND m.token = r.token "
            "RETURNING m.id, m.queue, r.token, m.slot_key), "
            f"{unstart}SELECT ({notify}(SELECT DISTINCT queue FROM back) d) x), {free('back')}"
        )
        self.ack = (
            f"WITH gone AS (DELETE FROM {m} m WHERE id = $1 AND token = $2 AND {HELD} "
            f"RETURNING m.slot_key) SELECT (SELECT count(*) FROM gone), {free('gone')}"
        )
        self.nack = (
            f"WITH back AS (UPDATE {m} m SET state = 'ready', token = NULL, "
            f"available_at = clock_timestamp() + $3 {SECONDS}, "
            f"seq = nextval('{s}.message_seq'), body = coalesce($4, m.body) "
            f"WHERE id = $1 AND token = $2 AND {HELD} "
            "RETURNING m.id, m.queue, $2 AS token, m.slot_key), "
            f"{unstart}SELECT (SELECT count(*) FROM back), "
            f"({notify}(SELECT DISTINCT queue FROM back) d) x), {free('back')}"
        )
        self.extend = (
            f"UPDATE {m} m SET available_at = clock_timestamp() + r.lease::float8 {SECONDS} "
            f"FROM unnest($1::text[], $2::text[], $3::text[]) AS r(id, token, lease){relax} "
            f"WHERE m.id = r.id AND m.token = r.token AND {HELD} RETURNING m.id"
        )
        self.dead_letter = (
            f"WITH dead AS (UPDATE {m} m SET state = 'dead', token = NULL, reason = $3, "
            "dead_at = clock_timestamp(), body = coalesce($4, m.body) "
            f"WHERE id = $1 AND token = $2 AND {HELD} RETURNING m.slot_key) "
            f"SELECT (SELECT count(*) FROM dead), {free('dead')}"
        )
        self.dead_letters = (
            # a dead letter written by something else may lack its reason or time
            "SELECT id, body, coalesce(reason, 'corrupt dead letter: no reason was stored'), "
            "coalesce(extract(epoch FROM dead_at)::float8, 0) "
            f"FROM {m} WHERE queue = $1 AND state = 'dead' "
            "ORDER BY dead_at, id LIMIT $2 OFFSET $3"
        )
        self.requeue_dead = (
            f"WITH back AS (UPDATE {m} SET state = 'ready', available_at = clock_timestamp(), "
            f"seq = nextval('{s}.message_seq'), lost = 0, deliveries = 0, reason = NULL, "
            "dead_at = NULL, admitted = false WHERE queue = $1 AND state = 'dead' "
            "AND ($2::text[] IS NULL OR id = ANY($2::text[])) RETURNING id, queue) "
            "SELECT id, NULL::bigint FROM back UNION ALL "
            f"SELECT NULL, ({notify}(SELECT DISTINCT queue FROM back) d) x)"
        )
        self.purge_dead = f"DELETE FROM {m} WHERE queue = $1 AND state = 'dead'"
        # parked messages (waiting for a concurrency slot) are waiting: purged, and
        # counted as scheduled
        self.purge = f"DELETE FROM {m} WHERE queue = $1 AND state IN ('ready', 'parked')"
        self.stats = (
            f"SELECT count(*) FILTER (WHERE {QUEUED} AND available_at <= c.now), "
            "count(*) FILTER (WHERE (state = 'ready' AND available_at > c.now) "
            "OR state = 'parked'), "
            "count(*) FILTER (WHERE state = 'reserved' AND available_at > c.now), "
            "count(*) FILTER (WHERE state = 'dead') "
            f"FROM {m}, (SELECT clock_timestamp() AS now) c WHERE queue = $1"
        )
        self.queues = f"SELECT name FROM {q} ORDER BY name"

        # -- storage -------------------------------------------------------------------
        records = (
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
            "$5::text[], $6::text[], $7::text[]) "
            "AS n(id, name, queue, status, lease_token, ttl, record)"
        )
        old = (
            f"old AS (SELECT t.id, t.status, t.lease_token FROM {t} t "
            f"JOIN new_t USING (id) WHERE {LIVE})"
        )
        insert = (
            f"INSERT INTO {t} AS t (id, name, queue, status, lease_token, expires_at, record) "
            f"SELECT n.id, n.name, n.queue, n.status, n.lease_token, "
            f"clock_timestamp() + n.ttl::float8 {SECONDS}, n.record::json "
        )
        told = announce(self.done_channel)
        self.save = (
            f"WITH new_t AS ({records}), {old}, "
            f"up AS ({insert} FROM new_t n ORDER BY n.id {upsert} RETURNING t.id, {told}) "
            "SELECT n.id, up.id IS NOT NULL AS saved, NULL::boolean AS held, old.status, "
            "old.lease_token FROM new_t n LEFT JOIN up USING (id) LEFT JOIN old USING (id)"
        )
        # the same for batches that only mark tasks running
        self.save_running = self.save + relax
        # outcome + ack: $8 are the lease tokens; the record is written only while the
        # lease holds, and the message deleted only if the record was written
        self.complete = (
            f"WITH new_t AS (SELECT n.*, k.token FROM ({records}) n "
            "JOIN unnest($1::text[], $8::text[]) AS k(id, token) USING (id)), "
            f"held AS (SELECT m.id FROM {m} m JOIN new_t n ON m.id = n.id AND m.token = n.token "
            f"WHERE {HELD} ORDER BY m.id FOR UPDATE OF m), {old}, "
            f"up AS ({insert} FROM new_t n JOIN held USING (id) ORDER BY n.id {upsert} "
            f"RETURNING t.id, {told}), "
            f"gone AS (DELETE FROM {m} m USING up WHERE m.id = up.id RETURNING m.id, "
            "m.slot_key) "
            "SELECT n.id, gone.id IS NOT NULL AS saved, held.id IS NOT NULL AS held, "
            f"old.status, old.lease_token, {free('gone')} AS freed "
            "FROM new_t n LEFT JOIN held USING (id) "
            "LEFT JOIN gone USING (id) LEFT JOIN old USING (id)"
        )
        # started_at travels as epoch seconds: a timestamp the driver cannot represent as
        # a datetime (year 294276, say) is then one corrupt record, not a failed page
        read = "t.record::text, extract(epoch FROM t.started_at)::float8, t.lease_token, t.status"
        self.get = f"SELECT {read} FROM {t} t WHERE t.id = $1 AND {LIVE}"
        self.list_prefix = f"SELECT t.id, {read} FROM {t} t WHERE {LIVE}"
        self.counts = f"SELECT t.status, count(*) FROM {t} t WHERE {LIVE} GROUP BY t.status"
        self.delete_expired = (
            f"WITH doomed AS (SELECT id FROM {t} WHERE expires_at <= clock_timestamp() "
            f"LIMIT $1 FOR UPDATE SKIP LOCKED) DELETE FROM {t} t USING doomed "
            "WHERE t.id = doomed.id"
        )
        self.drop_schema = f"DROP SCHEMA IF EXISTS {s} CASCADE"


def _new_records(tasks: str, first: int) -> str:
    """CTEs ``new_t`` (records from arrays ``$first``...) and ``up`` (those inserted)."""
    params = ", ".join(f"${first + n}::text[]" for n in range(6))
    return (
        f"new_t AS (SELECT * FROM unnest({params}) "
        "AS n(id, name, queue, status, lease_token, record)), "
        f"up AS (INSERT INTO {tasks} AS t (id, name, queue, status, lease_token, record) "
        "SELECT id, name, queue, status, lease_token, record::json FROM new_t ORDER BY id "
        f"{_NEW_RECORD_UPSERT} RETURNING t.id)"
    )


def _refuse_existing(schema: str, tasks: str) -> str:
    """Abort the statement when a record in ``new_t`` was not inserted: it exists. The
    error names the id and the stored status (the statement's snapshot shows the record
    as it was; one committed meanwhile by another transaction is not in it)."""
    # the status is looked up (by id) for refused rows only: no join on the hot path
    return (
        f"SELECT bool_and({schema}.refuse(format('task %s already exists (status %s)', "
        f"n.id, coalesce((SELECT left(o.status, 40) FROM {tasks} o WHERE o.id = n.id), "
        "'just written by another transaction')))) "
        "FROM new_t n WHERE n.id NOT IN (SELECT id FROM up)"
    )
