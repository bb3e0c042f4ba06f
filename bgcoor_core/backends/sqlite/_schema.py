"""The SQLite schema, versioned with ``PRAGMA user_version``.

Each entry of :data:`MIGRATIONS` moves the file one version up; a newer release appends
entries and existing files are migrated on open, inside one write transaction so two
processes opening a new file at once cannot both apply a step.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # version 1
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('ready', 'reserved', 'dead')),
        available_at REAL NOT NULL,   -- ready: not before (eta), reserved: lease deadline
        token TEXT,
        deliveries INTEGER NOT NULL DEFAULT 0,
        lost INTEGER NOT NULL DEFAULT 0,
        reason TEXT,
        dead_at REAL
    );
    CREATE INDEX messages_take ON messages (queue, priority DESC, seq, id)
        WHERE state != 'dead';
    CREATE INDEX messages_dead ON messages (queue, dead_at) WHERE state = 'dead';
    CREATE TABLE queues (name TEXT PRIMARY KEY);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        queue TEXT NOT NULL,
        status TEXT NOT NULL,
        lease_token TEXT,
        expires_at REAL,
        record TEXT NOT NULL
    );
    CREATE INDEX tasks_status ON tasks (status, id);
    CREATE INDEX tasks_name ON tasks (name, id);
    CREATE INDEX tasks_queue ON tasks (queue, id);
    CREATE INDEX tasks_expires ON tasks (expires_at) WHERE expires_at IS NOT NULL;
    """,
    # version 2: the record as it was before a reserve marked it running, so that a
    # hand-back can restore it (NULL once anything else writes the record)
    """
    ALTER TABLE tasks ADD COLUMN before_start TEXT;
    """,
    # version 3: periodic tasks; the definition is ScheduleDefinition JSON, the other
    # columns the ScheduleState that fire() keeps (times in epoch milliseconds)
    """
    CREATE TABLE schedules (
        id TEXT PRIMARY KEY,
        definition TEXT NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        since_ms INTEGER NOT NULL,
        last_tick_ms INTEGER,
        last_task_id TEXT,
        buffered_tick_ms INTEGER,
        fired INTEGER NOT NULL DEFAULT 0,
        skipped INTEGER NOT NULL DEFAULT 0,
        missed INTEGER NOT NULL DEFAULT 0
    );
    """,
    # version 4: workflows; state is the WorkflowState JSON as submitted (never rewritten),
    # progress the fields a step changes (status copied out), and the messages of members
    # not released yet wait in parked, where no reserve looks
    """
    CREATE TABLE workflows (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        state TEXT NOT NULL,
        progress TEXT NOT NULL
    );
    CREATE TABLE parked (
        workflow_id TEXT NOT NULL,
        node INTEGER NOT NULL,
        id TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL,
        body BLOB NOT NULL,
        eta REAL,
        PRIMARY KEY (workflow_id, node)
    ) WITHOUT ROWID;
    """,
    # version 5: what a step changes is kept apart from what it never does, so a step
    # rewrites only small rows: each node's progress (parents not done, its done status)
    # in a workflow_nodes row, the submitted state in workflow_graphs, and the workflow's
    # own progress (status, left, error, finished_at) in workflows, which an ended
    # workflow leaves at expires_at (with its members)
    """
    CREATE TABLE workflow_nodes (
        workflow_id TEXT NOT NULL,
        node INTEGER NOT NULL,
        remaining INTEGER NOT NULL,
        done TEXT,
        PRIMARY KEY (workflow_id, node)
    ) WITHOUT ROWID;
    INSERT INTO workflow_nodes (workflow_id, node, remaining, done)
        SELECT w.id, CAST(r.key AS INTEGER), r.value, d.value
        FROM workflows AS w, json_each(w.progress, '$.remaining') AS r,
            json_each(w.progress, '$.done') AS d
        WHERE json_valid(w.progress) AND json_type(w.progress, '$.remaining') = 'array'
            AND json_type(w.progress, '$.done') = 'array' AND r.key = d.key;
    CREATE TABLE workflow_graphs (id TEXT PRIMARY KEY, state TEXT NOT NULL);
    INSERT INTO workflow_graphs (id, state) SELECT id, state FROM workflows;
    CREATE TABLE workflows_v5 (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        progress TEXT NOT NULL,
        expires_at REAL
    );
    INSERT INTO workflows_v5 (id, status, progress)
        SELECT id, status, CASE WHEN json_valid(progress) THEN
            json_set(json_remove(progress, '$.remaining', '$.done'), '$.left',
                (SELECT count(*) FROM workflow_nodes AS n
                    WHERE n.workflow_id = workflows.id AND n.done IS NULL))
            ELSE progress END
        FROM workflows;
    DROP TABLE workflows;
    ALTER TABLE workflows_v5 RENAME TO workflows;
    CREATE INDEX workflows_expires ON workflows (expires_at) WHERE expires_at IS NOT NULL;
    """,
    # version 6: unique keys; a row names the task that took its key and the end of its
    # window, and is taken over by the next enqueue once that task is final
    """
    CREATE TABLE unique_keys (
        key TEXT PRIMARY KEY,
        task_id TEXT NOT NULL,
        until REAL
    ) WITHOUT ROWID;
    """,
    # version 7: rate and concurrency limits (bgcoor_core._gates). A message keeps its
    # encoded gate; slot_key names the key whose concurrency slot it takes (NULL without a
    # concurrency limit), so a leased row with one is a holder of that key. slot_wait is 1
    # while it waits for a slot (parked: out of the take index, still a 'ready' row, so
    # purge and stats see it), admitted 1 while it holds a rate slot that is due at its
    # available_at. gate_rates keeps each key's theoretical arrival time (epoch seconds).
    """
    ALTER TABLE messages ADD COLUMN gate TEXT;
    ALTER TABLE messages ADD COLUMN slot_key TEXT;
    ALTER TABLE messages ADD COLUMN slot_wait INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN admitted INTEGER NOT NULL DEFAULT 0;
    DROP INDEX messages_take;
    CREATE INDEX messages_take ON messages (queue, priority DESC, seq, id)
        WHERE state != 'dead' AND slot_wait = 0;
    CREATE INDEX messages_holders ON messages (slot_key, available_at)
        WHERE slot_key IS NOT NULL AND state = 'reserved';
    CREATE INDEX messages_waiting ON messages (slot_key, priority DESC, seq, id)
        WHERE slot_wait != 0;
    CREATE TABLE gate_rates (key TEXT PRIMARY KEY, tat REAL NOT NULL) WITHOUT ROWID;
    ALTER TABLE parked ADD COLUMN gate TEXT;
    """,
    # version 8: queue limits (._queue_limits) count a queue's waiting messages, every
    # 'ready' row (parked and scheduled ones too); this index answers that count alone,
    # without reading a row (state is a column too, so it covers the count's WHERE)
    """
    CREATE INDEX messages_ready ON messages (queue, state) WHERE state = 'ready';
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNewError(RuntimeError):
    pass


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the file up to :data:`SCHEMA_VERSION`; return the version it had.

    Runs on every open: an embedded file needs no separate migration step.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"database schema version {version} is newer than this bg-coor supports "
                f"({SCHEMA_VERSION}); upgrade bg-coor"
            )
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step + 1}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return version
