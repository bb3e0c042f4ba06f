"""SQL on one schema's ``workflows``, ``workflow_nodes`` and ``parked`` tables."""

from __future__ import annotations

from bgcoor_core import TaskStatus
from bgcoor_core.kit import WorkflowStatus

from ._schedules import HOLD_LIMIT_MS
from ._sql import LIVE, SECONDS, Statements, announce, quote_ident

#: ``expires_at`` of a workflow row after a step: kept, set from the step's seconds
#: (``NULL`` seconds: kept forever), or cleared (a reopened workflow).
KEEP, SET, CLEAR = 0, 1, 2
#: Members left at or below which a step may end its workflow: it loads every node row.
ENDING = 2


class WorkflowStatements:
    """Built once per schema (see :mod:`bgcoor_postgres._workflows`)."""

    def __init__(self, sql: Statements) -> None:
        s = quote_ident(sql.schema)
        wf, nodes, parked = f"{s}.workflows", f"{s}.workflow_nodes", f"{s}.parked"
        t, m, q = f"{s}.tasks", f"{s}.messages", f"{s}.queues"
        alive = "(w.expires_at IS NULL OR w.expires_at > clock_timestamp())"
        # $1 id, $2 status, $3 submitted state, $4 its digest, $5 members left; $6-$8 the
        # node rows (node, remaining, done); $9-$15 the parked rows
        self.submit = (
            f"WITH w AS (INSERT INTO {wf} (id, status, state, digest, members_left) "
            "VALUES ($1, $2, $3::json, $4, $5) ON CONFLICT (id) DO NOTHING RETURNING id), "
            f"n AS (INSERT INTO {nodes} (workflow_id, node, remaining, done) "
            "SELECT w.id, n.node, n.remaining, n.done FROM w "
            "CROSS JOIN unnest($6::int[], $7::int[], $8::text[]) AS n(node, remaining, done)), "
            f"p AS (INSERT INTO {parked} (workflow_id, node, id, queue, priority, body, eta, "
            "record) SELECT w.id, p.node, p.id, p.queue, p.priority, p.body, p.eta::float8, "
            "p.record::json FROM w CROSS JOIN unnest($9::int[], $10::text[], $11::text[], "
            "$12::int[], $13::bytea[], $14::text[], $15::text[]) "
            "AS p(node, id, queue, priority, body, eta, record)) "
            "SELECT count(*) FROM w"
        )
        # a submission finding an ended workflow's expired row replaces it (with its
        # node and parked rows, by the foreign keys)
        self.drop_expired_one = (
            f"DELETE FROM {wf} w WHERE w.id = $1 AND w.expires_at <= clock_timestamp() RETURNING 1"
        )
        self.delete_expired = (
            f"WITH doomed AS (SELECT id FROM {wf} w WHERE w.expires_at <= clock_timestamp() "
            f"LIMIT $1 FOR UPDATE SKIP LOCKED) DELETE FROM {wf} w USING doomed "
            "WHERE w.id = doomed.id"
        )
        # the state is sent only if it is not the one the caller parsed ($2, its digest);
        # the CTE keeps the columns a step reads, never the (large) state itself
        columns = (
            "w.id, w.status, w.members_left, w.error, w.finished_at, w.digest, "
            "CASE WHEN w.digest IS NOT DISTINCT FROM $2 THEN NULL ELSE w.state::text END "
            "AS state"
        )
        row = "w.status, w.members_left, w.error, w.finished_at, w.state, w.digest, "
        arrays = (
            "(SELECT array_agg(node ORDER BY node) FROM n), "
            "(SELECT array_agg(remaining ORDER BY node) FROM n), "
            "(SELECT array_agg(done ORDER BY node) FROM n) "
        )
        # $1 id, $2 the digest of the state this process parsed (the state is sent only if
        # it differs), $3 the nodes the step needs, $4 all of them, $5 all of them if the
        # workflow still runs (an outcome that fails it drops every member waiting: one
        # counted after it failed needs its own nodes only). The hold limit is set
        # by the locking statement itself. The node rows are locked too (FOR UPDATE reads
        # their latest versions: a plain read would see them as of this statement's start,
        # before the workflow lock was granted); every step locks the workflow row first,
        # as the joins on w make these do.
        running = WorkflowStatus.RUNNING.value
        every = (
            f"($4 OR w.digest IS DISTINCT FROM $2 OR w.members_left <= {ENDING} "
            f"OR ($5 AND w.status = '{running}'))"
        )
        self.lock = (
            "WITH hold AS MATERIALIZED (SELECT set_config("
            f"'idle_in_transaction_session_timeout', '{HOLD_LIMIT_MS}', true)), "
            f"w AS MATERIALIZED (SELECT {columns} FROM {wf} AS w, hold "
            f"WHERE w.id = $1 AND {alive} "
            "FOR UPDATE OF w), "
            f"few AS (SELECT r.node, r.remaining, r.done FROM w JOIN {nodes} r "
            f"ON r.workflow_id = w.id AND r.node = ANY($3::int[]) WHERE NOT {every} "
            "FOR UPDATE OF r), "
            f"every AS (SELECT r.node, r.remaining, r.done FROM w JOIN {nodes} r "
            f"ON r.workflow_id = w.id WHERE {every} FOR UPDATE OF r), "
            "n AS MATERIALIZED (SELECT * FROM few UNION ALL SELECT * FROM every) "
            f"SELECT {row}{arrays}FROM w"
        )
        # the same without locks (one statement: one snapshot)
        self.get = (
            f"WITH w AS MATERIALIZED (SELECT {columns} FROM {wf} w "
            f"WHERE w.id = $1 AND {alive}), "
            f"n AS MATERIALIZED (SELECT r.node, r.remaining, r.done FROM w JOIN {nodes} r "
            "ON r.workflow_id = w.id) "
            f"SELECT {row}{arrays}FROM w"
        )
        # every node row, under the workflow's lock (when a step needs more than it loaded)
        self.nodes = (
            "SELECT array_agg(node ORDER BY node), array_agg(remaining ORDER BY node), "
            f"array_agg(done ORDER BY node) FROM {nodes} WHERE workflow_id = $1"
        )
        # the records of members to cancel or restore, as reads show them
        self.members = (
            "SELECT t.id, t.record::text, extract(epoch FROM t.started_at)::float8, "
            f"t.lease_token, t.status FROM {t} t WHERE t.id = ANY($1::text[]) AND {LIVE} "
            "ORDER BY t.id FOR UPDATE"
        )
        # a duplicate outcome of a member whose workflow had ended (run again on its own
        # after a requeue that did not reopen it): its record gets its TTL again
        self.expire_member = (
            f"UPDATE {t} SET expires_at = clock_timestamp() + $2::float8 {SECONDS} WHERE id = $1"
        )
        self.step = _step(sql.channel, sql.done_channel, wf, nodes, parked, t, m, q)


def _step(channel: str, done: str, wf: str, nodes: str, parked: str, t: str, m: str, q: str) -> str:
    """One statement doing a step's effects.

    $1 id, $2 status, $3 members left, $4 error, $5 finished_at, $6 expires_at mode
    (KEEP, SET, CLEAR), $7 seconds for SET; $8-$10 the node rows changed (node, remaining,
    done); $11 nodes released, $12 nodes unparked unreleased (each an index
    look-up: every node when all parked rows go); $13 released records may be
    ``cancelled`` (a reopened workflow's); $14-$18 the records rewritten (id, JSON, lease
    token, status, ttl); $19-$20 the records given a TTL (NULL: lifted). The sets of
    records are disjoint: one statement updates a row once.
    """
    waiting, cancelled = TaskStatus.WAITING.value, TaskStatus.CANCELLED.value
    return (
        f"WITH st AS (UPDATE {wf} SET status = $2, members_left = $3, error = $4, "
        "finished_at = $5, expires_at = CASE $6::int WHEN 1 THEN clock_timestamp() "
        f"+ $7::float8 {SECONDS} WHEN 2 THEN NULL ELSE expires_at END WHERE id = $1), "
        f"nd AS (UPDATE {nodes} r SET remaining = u.remaining, done = u.done "
        "FROM unnest($8::int[], $9::int[], $10::text[]) AS u(node, remaining, done) "
        "WHERE r.workflow_id = $1 AND r.node = ANY($8::int[]) AND r.node = u.node), "
        f"gone AS (DELETE FROM {parked} p WHERE p.workflow_id = $1 "
        "AND p.node = ANY($11::int[] || $12::int[]) "
        "RETURNING p.node, p.id, p.queue, p.priority, p.body, p.eta, p.record), "
        "moved AS (SELECT * FROM gone WHERE node = ANY($11::int[])), "
        f"ins AS (INSERT INTO {m} (id, queue, priority, body, available_at) "
        "SELECT id, queue, priority, body, coalesce(to_timestamp(eta), clock_timestamp()) "
        "FROM moved ORDER BY node ON CONFLICT (id) DO NOTHING RETURNING queue), "
        f"named AS (INSERT INTO {q} (name) SELECT DISTINCT queue FROM moved "
        "ON CONFLICT DO NOTHING), "
        f"pending AS (UPDATE {t} t SET status = '{TaskStatus.PENDING.value}', "
        "record = moved.record, expires_at = NULL FROM moved WHERE t.id = moved.id "
        f"AND (t.status = '{waiting}' OR ($13 AND t.status = '{cancelled}')) AND {LIVE}), "
        f"rewritten AS (UPDATE {t} t SET status = c.status, "
        "lease_token = c.token, record = c.record::json, "
        f"expires_at = clock_timestamp() + c.ttl::float8 {SECONDS}, started_at = NULL, "
        "before_status = NULL, before_token = NULL "
        "FROM unnest($14::text[], $15::text[], $16::text[], $17::text[], $18::text[]) "
        f"AS c(id, record, token, status, ttl) WHERE t.id = c.id RETURNING {announce(done)}), "
        f"expiring AS (UPDATE {t} t SET expires_at = clock_timestamp() + e.ttl::float8 "
        f"{SECONDS} FROM unnest($19::text[], $20::text[]) AS e(id, ttl) "
        f"WHERE t.id = e.id AND {LIVE}) "
        f"SELECT d.queue, pg_notify('{channel}', d.queue) "
        "FROM (SELECT DISTINCT queue FROM ins) d"
    )
