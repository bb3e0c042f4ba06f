"""The schema, versioned in a ``migrations`` table inside the configured schema.

Each entry of :data:`MIGRATIONS` moves the schema one version up; a newer release appends
entries. :func:`migrate` applies the missing ones in one transaction that first takes a
transaction-level advisory lock keyed by the schema name, so workers starting together
(and ``bgcoor migrate`` beside them) apply each step exactly once: the second waits for
the first to commit, then finds nothing left to do.

``temporary=true`` drops the schema on close, so it is honoured only for a schema this
process created (:data:`CREATED`): an existing one, ``public`` say, holds tables that are
not ours, and the option is refused before anything is created in it.

Times are server time (``clock_timestamp()``), so the clocks of worker hosts never decide
whether a lease has expired.
"""

from __future__ import annotations

import asyncpg

from bgcoor_core import ConfigurationError

from ._sql import quote_ident

MIGRATIONS: list[tuple[str, str]] = [
    (
        "messages, queues and task records",
        """
        CREATE SEQUENCE {s}.message_seq;
        CREATE TABLE {s}.messages (
            id text COLLATE "C" PRIMARY KEY,
            queue text NOT NULL,
            priority integer NOT NULL DEFAULT 0,
            seq bigint NOT NULL DEFAULT nextval('{s}.message_seq'),
            body bytea NOT NULL,
            state text NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'reserved', 'dead')),
            -- ready: not before (eta); reserved: lease deadline
            available_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            token text,
            deliveries integer NOT NULL DEFAULT 0,
            lost integer NOT NULL DEFAULT 0,
            reason text,
            dead_at timestamptz
        );
        -- reserve: per queue, higher priority first, FIFO within a priority
        CREATE INDEX messages_take ON {s}.messages (queue, priority DESC, seq)
            WHERE state <> 'dead';
        -- an idle consumer's next wake-up: the earliest eta or lease deadline
        CREATE INDEX messages_due ON {s}.messages (queue, available_at)
            WHERE state <> 'dead';
        CREATE INDEX messages_dead ON {s}.messages (queue, dead_at, id)
            WHERE state = 'dead';
        CREATE TABLE {s}.queues (name text COLLATE "C" PRIMARY KEY);
        CREATE TABLE {s}.tasks (
            id text COLLATE "C" PRIMARY KEY,
            name text NOT NULL,
            queue text NOT NULL,
            status text NOT NULL,
            lease_token text,
            expires_at timestamptz,
            record json NOT NULL
        );
        -- list(status=...) pages by id; counts() reads (status, expires_at) from the index
        CREATE INDEX tasks_status ON {s}.tasks (status, id) INCLUDE (expires_at);
        CREATE INDEX tasks_name ON {s}.tasks (name, id);
        CREATE INDEX tasks_queue ON {s}.tasks (queue, id);
        CREATE INDEX tasks_expires ON {s}.tasks (expires_at) WHERE expires_at IS NOT NULL;
        -- aborts a statement (and so its transaction) from inside SQL: enqueue is all or
        -- nothing when a record refuses its new status
        CREATE FUNCTION {s}.refuse(what text) RETURNS boolean LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'bgcoor: %', what USING ERRCODE = 'BG409';
        END $$;
        """,
    ),
    (
        "a reserve marks task records running without rewriting them",
        """
        -- set while a reserve has marked the record running (Reservation.started) without
        -- touching its JSON: when the attempt started, and the status and lease token the
        -- record had before, so reads show it running and a hand-back restores it; all
        -- NULL again once anything else writes the record
        ALTER TABLE {s}.tasks ADD COLUMN started_at timestamptz,
            ADD COLUMN before_status text, ADD COLUMN before_token text;
        """,
    ),
    (
        "schedules: definitions and the state their ticks are fired by",
        """
        -- one row per schedule (see bgcoor_postgres._schedules): the definition as its
        -- JSON, kept verbatim, and the state written by fire() under the row's lock.
        -- Times are epoch milliseconds, as ticks are.
        CREATE TABLE {s}.schedules (
            id text COLLATE "C" PRIMARY KEY,
            definition json NOT NULL,
            paused boolean NOT NULL DEFAULT false,
            since_ms bigint NOT NULL
                DEFAULT round(extract(epoch FROM clock_timestamp()) * 1000)::bigint,
            last_tick_ms bigint,
            last_task_id text,
            buffered_tick_ms bigint,
            fired bigint NOT NULL DEFAULT 0,
            skipped bigint NOT NULL DEFAULT 0,
            missed bigint NOT NULL DEFAULT 0
        );
        """,
    ),
    (
        "workflows: their states and the messages of members not released yet",
        """
        -- one row per workflow (see bgcoor_postgres._workflows): its WorkflowState as
        -- JSON (json, kept verbatim), rewritten by each member's outcome under the row's
        -- lock; status mirrors the state's for operators' queries
        CREATE TABLE {s}.workflows (
            id text COLLATE "C" PRIMARY KEY,
            status text NOT NULL,
            state json NOT NULL,
            created_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        -- a member's message until its parents are done (its record is 'waiting'), and
        -- its record as it becomes when released ('pending'): released, the row moves
        -- into messages; the reserve's table and indexes never see parked members
        CREATE TABLE {s}.parked (
            workflow_id text COLLATE "C" NOT NULL
                REFERENCES {s}.workflows (id) ON DELETE CASCADE,
            node integer NOT NULL,
            id text COLLATE "C" NOT NULL,
            queue text NOT NULL,
            priority integer NOT NULL,
            body bytea NOT NULL,
            eta float8,
            record json NOT NULL,
            PRIMARY KEY (workflow_id, node)
        );
        """,
    ),
    (
        "workflows: a row per node for its progress; ended workflows expire",
        """
        -- a step locks the workflow row, reads and writes the rows of the nodes it
        -- touches (see bgcoor_postgres._workflow_rows), never the state: from now on the
        -- state as submitted (graph, members, TTLs), parsed once per process and known by
        -- its digest; the scalars steps change are columns
        ALTER TABLE {s}.workflows ADD COLUMN digest text,
            ADD COLUMN members_left integer, ADD COLUMN error text,
            ADD COLUMN finished_at timestamptz, ADD COLUMN expires_at timestamptz;
        CREATE INDEX workflows_expires ON {s}.workflows (expires_at)
            WHERE expires_at IS NOT NULL;
        CREATE TABLE {s}.workflow_nodes (
            workflow_id text COLLATE "C" NOT NULL
                REFERENCES {s}.workflows (id) ON DELETE CASCADE,
            node integer NOT NULL,
            -- parents not done yet; the final status once done (NULL before)
            remaining integer NOT NULL,
            done text,
            PRIMARY KEY (workflow_id, node)
        );
        -- the workflows of version 4: their progress moves out of their states (a state
        -- whose lists are not lists of the right values gets no node rows: it reads as
        -- corrupt, as it did)
        INSERT INTO {s}.workflow_nodes (workflow_id, node, remaining, done)
        SELECT w.id, r.ord - 1, r.value::integer, d.value
        FROM {s}.workflows w
        CROSS JOIN LATERAL json_array_elements_text(CASE
            WHEN json_typeof(w.state->'remaining') = 'array' THEN w.state->'remaining'
            ELSE '[]' END) WITH ORDINALITY AS r(value, ord)
        JOIN LATERAL json_array_elements_text(CASE
            WHEN json_typeof(w.state->'done') = 'array' THEN w.state->'done'
            ELSE '[]' END) WITH ORDINALITY AS d(value, ord) ON d.ord = r.ord
        WHERE r.value ~ '^-?[0-9]{{1,9}}$';
        UPDATE {s}.workflows w SET digest = md5(w.state::text),
            error = CASE WHEN json_typeof(w.state->'error') = 'string'
                THEN w.state->>'error' END,
            finished_at = CASE WHEN w.state->>'finished_at' ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}T'
                THEN (w.state->>'finished_at')::timestamptz END,
            members_left = (SELECT count(*) FROM {s}.workflow_nodes n
                WHERE n.workflow_id = w.id AND n.done IS NULL);
        """,
    ),
    (
        "unique keys: the task holding each key and the end of its window",
        """
        -- one row per unique key (see bgcoor_postgres._uniques): the task that took it
        -- and the end of its window (Unix seconds, NULL: none). An enqueue locks the rows
        -- of its keys (inserting the absent ones) before it reads their holders, and
        -- takes over a key whose holder is final (or gone) and whose window is over;
        -- nothing releases a key. task_id NULL: locked by an enqueue that took nothing
        -- (it raised inside its caller's transaction), free
        CREATE TABLE {s}.unique_keys (
            key text COLLATE "C" PRIMARY KEY,
            task_id text COLLATE "C",
            until float8
        );
        """,
    ),
    (
        "rate and concurrency limits: gates, slot holders, parked messages, key rows",
        """
        -- (see bgcoor_postgres._gates) gate: the message's encoded gate (Message.gate),
        -- NULL for almost every message; slot_key: the key whose concurrency slot it
        -- takes, set by the reserve's gate step only, so a 'reserved' row with one and a
        -- live lease holds a slot of that key; 'parked': waiting for a slot of slot_key,
        -- out of the reserve's indexes; admitted: given a rate slot, due at available_at
        ALTER TABLE {s}.messages DROP CONSTRAINT IF EXISTS messages_state_check,
            ADD CONSTRAINT messages_state_check
                CHECK (state IN ('ready', 'reserved', 'dead', 'parked')),
            ADD COLUMN gate text, ADD COLUMN slot_key text COLLATE "C",
            ADD COLUMN admitted boolean NOT NULL DEFAULT false;
        -- the reserve's indexes leave parked rows out (a parked backlog at the head of a
        -- queue must cost the reserves of that queue nothing)
        DROP INDEX {s}.messages_take;
        CREATE INDEX messages_take ON {s}.messages (queue, priority DESC, seq)
            WHERE state IN ('ready', 'reserved');
        DROP INDEX {s}.messages_due;
        CREATE INDEX messages_due ON {s}.messages (queue, available_at)
            WHERE state IN ('ready', 'reserved');
        -- a key's slot holders, and its parked messages in ready order
        CREATE INDEX messages_holders ON {s}.messages (slot_key, available_at)
            WHERE state = 'reserved' AND slot_key IS NOT NULL;
        CREATE INDEX messages_parked ON {s}.messages (slot_key, priority DESC, seq)
            WHERE state = 'parked';
        -- gated messages not decided yet, by queue and gate: what waits behind a key a
        -- gate step found saturated
        CREATE INDEX messages_gated ON {s}.messages (queue, gate, priority DESC, seq)
            WHERE state = 'ready' AND gate IS NOT NULL AND NOT admitted;
        -- a row per gate key: what every decision on the key locks (FOR UPDATE, keys in
        -- sorted order), and the key's rate state (GCRA theoretical arrival time, Unix
        -- seconds; NULL or past: idle, deleted by delete_expired)
        CREATE TABLE {s}.gate_keys (key text COLLATE "C" PRIMARY KEY, tat float8);
        -- frees one slot per entry of keys (a holder settled): under each key's lock, in
        -- key order, moves the key's first parked message back to ready and notifies its
        -- queue. PL/pgSQL on purpose: each statement inside takes a new snapshot, so the
        -- one after the lock sees a message parked by the reserve it waited for. STRICT:
        -- a settle without a slot (NULL keys) never calls it.
        CREATE FUNCTION {s}.free_slots(keys text[], channel text) RETURNS integer
        LANGUAGE plpgsql STRICT AS $$
        DECLARE
            k text;
            n integer;
            q text;
            moved integer := 0;
        BEGIN
            FOR k, n IN SELECT u.key, count(*)::integer FROM unnest(keys) AS u(key)
                    WHERE u.key IS NOT NULL GROUP BY u.key ORDER BY u.key LOOP
                INSERT INTO {s}.gate_keys AS g (key) VALUES (k)
                    ON CONFLICT (key) DO UPDATE SET tat = g.tat;
                FOR q IN WITH first_parked AS (SELECT p.id FROM {s}.messages p
                        WHERE p.slot_key = k AND p.state = 'parked'
                        ORDER BY p.priority DESC, p.seq LIMIT n FOR UPDATE SKIP LOCKED)
                    UPDATE {s}.messages m SET state = 'ready' FROM first_parked
                    WHERE m.id = first_parked.id RETURNING m.queue LOOP
                    PERFORM pg_notify(channel, q);
                    moved := moved + 1;
                END LOOP;
            END LOOP;
            RETURN moved;
        END $$;
        """,
    ),
    (
        "queue limits: an index of each queue's waiting messages",
        """
        -- (see bgcoor_postgres._queue_limits) a producer's enqueue into a queue with a
        -- limit counts the queue's waiting messages, ready (scheduled too) and parked,
        -- from this index alone (an index-only scan: no table page is read once vacuum
        -- has marked them visible). Leased and dead rows are not in it, so a reserve's
        -- lease adds no entry; only a message becoming ready or parked does.
        CREATE INDEX messages_waiting ON {s}.messages (queue)
            WHERE state IN ('ready', 'parked');
        """,
    ),
]

SCHEMA_VERSION = len(MIGRATIONS)

#: (DSN, schema) of every schema this process created: the only ones it ever drops.
CREATED: set[tuple[str, str]] = set()


class SchemaTooNewError(ConfigurationError):
    """The schema was migrated by a newer bgcoor-postgres than this one."""


class SchemaNotMigratedError(ConfigurationError):
    """``auto_migrate`` is off and the schema lacks migrations: run ``bgcoor migrate``."""


class TemporarySchemaError(ConfigurationError):
    """``temporary=true`` for a schema that this process did not create."""


def check_temporary(dsn: str, schema: str, temporary: bool) -> None:
    """Refuse ``temporary`` unless this process created ``schema``: dropping it on close
    would take tables that are not ours with it."""
    if temporary and (dsn, schema) not in CREATED:
        raise TemporarySchemaError(
            f"PostgreSQL URL option temporary=true refused: schema {schema!r} already "
            "existed, not created by this process, and a backend never drops what it did "
            "not create; use a new schema name or remove the temporary option"
        )


async def migrate(
    conn: asyncpg.Connection, schema: str, *, dsn: str = "", temporary: bool = False
) -> list[str]:
    """Bring ``schema`` up to :data:`SCHEMA_VERSION`; a line per migration applied.

    ``temporary``: refuse (:class:`TemporarySchemaError`, before writing anything) when
    the schema exists and was not created by this process.
    """
    key = (dsn, schema)
    created = False
    try:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                f"bgcoor-migrate:{schema}",
            )
            # under the lock: a concurrent creator has committed, or not begun
            if not await schema_exists(conn, schema):
                await conn.execute(f"CREATE SCHEMA {quote_ident(schema)}")
                created = True
                CREATED.add(key)
            check_temporary(dsn, schema, temporary)
            return await _apply(conn, schema)
    except BaseException:
        if created:  # rolled back: the schema is not there to be ours
            CREATED.discard(key)
        raise


async def schema_exists(conn: asyncpg.Connection, schema: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", schema))


async def _apply(conn: asyncpg.Connection, schema: str) -> list[str]:
    s = quote_ident(schema)
    applied: list[str] = []
    await conn.execute(
        f"CREATE TABLE IF NOT EXISTS {s}.migrations (version integer PRIMARY KEY, "
        "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
    )
    version = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {s}.migrations")
    _check_not_newer(schema, version)
    for number in range(version + 1, SCHEMA_VERSION + 1):
        name, script = MIGRATIONS[number - 1]
        await conn.execute(script.format(s=s))
        await conn.execute(
            f"INSERT INTO {s}.migrations (version, name) VALUES ($1, $2)", number, name
        )
        applied.append(f"postgresql schema {schema}: version {number} ({name})")
    return applied


async def check_version(conn: asyncpg.Connection, schema: str) -> None:
    """Refuse to run on a schema that is missing migrations or is newer than this code."""
    s = quote_ident(schema)
    exists = await conn.fetchval("SELECT to_regclass($1)", f"{s}.migrations")
    version = 0
    if exists is not None:
        version = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {s}.migrations")
    _check_not_newer(schema, version)
    if version < SCHEMA_VERSION:
        raise SchemaNotMigratedError(
            f"PostgreSQL schema {schema!r} is at version {version}, this bgcoor-postgres needs "
            f"{SCHEMA_VERSION}: run `bgcoor migrate` (or drop auto_migrate=false)"
        )


def _check_not_newer(schema: str, version: int) -> None:
    if version > SCHEMA_VERSION:
        raise SchemaTooNewError(
            f"PostgreSQL schema {schema!r} is at version {version}, newer than this "
            f"bgcoor-postgres supports ({SCHEMA_VERSION}); upgrade bgcoor-postgres"
        )
