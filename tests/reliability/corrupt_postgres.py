"""PostgreSQL: every column of ``messages``, ``tasks`` and ``queues`` corrupted for the
victim, one at a time, through a raw asyncpg connection (see ``corruption.py``).

Values are those the schema itself accepts (its types, NOT NULL and CHECK constraints
still hold): a counter at the integer maximum, a status no release writes, a body that
is not a message, a time of 'infinity'. Two columns are left out on purpose, see
:data:`NOT_CORRUPTIONS`.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .corruption import Apply, Corruption
from .harness import Rig

INT_MAX = 2**31 - 1
BIGINT_MAX = 2**63 - 1

#: Columns without an entry, and why: what a change to them makes is another valid item,
#: not a corrupt one, so there is nothing the backend could tell apart.
NOT_CORRUPTIONS = {
    "messages.id": "a message under another id is another task's message (its body then "
    "names a different task: dead-lettered as malformed, but the victim's own record "
    "would wait for a message that no longer exists under its id)",
    "messages.queue": "a message moved to another queue is served to that queue's "
    "consumers; no consumer of the victim's queue ever sees it",
}


def _update(table: str, assignment: str, *args: object) -> Apply:
    """``UPDATE <schema>.<table> SET <assignment> WHERE id = $1`` for the victim's row
    (``{s}`` in ``assignment`` is the quoted schema; ``args`` are ``$2``...)."""

    async def apply(rig: Rig, victim: str) -> None:
        await _execute(
            rig, f"UPDATE {{s}}.{table} SET {assignment} WHERE id = $1", victim, *args, rows=1
        )

    return apply


def _statement(sql: str, *, rows: int = 1) -> Apply:
    async def apply(rig: Rig, victim: str) -> None:
        await _execute(rig, sql, victim, rows=rows)

    return apply


async def _execute(rig: Rig, sql: str, *args: object, rows: int) -> None:
    import asyncpg  # imported when used: collecting the suite must not need the plugin

    schema = parse_qs(urlsplit(rig.url).query)["schema"][0]
    conn = await asyncpg.connect(rig.url.partition("?")[0])
    try:
        done = await conn.execute(sql.replace("{s}", f'"{schema}"'), *args)
    finally:
        await conn.close()
    assert int(done.rsplit(" ", 1)[-1]) == rows, f"{sql!r}: {done}"


def _pg(
    name: str, what: str, apply: Apply, *, runs: bool = False, shared: str | None = None
) -> Corruption:
    return Corruption("postgres", name, what, apply, victim_runs=runs, shared=shared)


#: What a gate or slot key on the victim's row touches beyond it.
_KEY = "a gate key's slots, which any task naming that key shares"


OTHER_BODY = "(SELECT body FROM {s}.messages WHERE id <> $1 ORDER BY seq LIMIT 1)"
OTHER_RECORD = "(SELECT record FROM {s}.tasks WHERE id <> $1 ORDER BY id LIMIT 1)"

MESSAGE_CORRUPTIONS = [
    _pg(
        "body-garbage",
        "messages.body: bytes that are no message (no content-type header)",
        _update("messages", "body = '\\xfffe00'::bytea"),
    ),
    _pg(
        "body-invalid-utf8",
        "messages.body: a JSON content type with invalid UTF-8 after it",
        _update("messages", "body = convert_to('application/json', 'UTF8') || '\\x0affff'"),
    ),
    _pg(
        "body-empty",
        "messages.body: empty",
        _update("messages", "body = ''::bytea"),
    ),
    _pg(
        "body-other-task",
        "messages.body: another (good) task's body under the victim's id",
        _update("messages", f"body = {OTHER_BODY}"),
    ),
    _pg(
        "deliveries-int-max",
        "messages.deliveries: the integer maximum (the reserve's + 1 overflowed)",
        _update("messages", f"deliveries = {INT_MAX}"),
    ),
    _pg(
        "deliveries-negative",
        "messages.deliveries: negative",
        _update("messages", "deliveries = -5"),
    ),
    _pg(
        "lost-int-max",
        "messages.lost: the integer maximum",
        _update("messages", f"lost = {INT_MAX}"),
    ),
    _pg(
        "priority-extreme",
        "messages.priority: the integer maximum (served first, that is all)",
        _update("messages", f"priority = {INT_MAX}"),
        runs=True,
    ),
    _pg(
        "seq-extreme",
        "messages.seq: the bigint maximum (served last in its priority)",
        _update("messages", f"seq = {BIGINT_MAX}"),
        runs=True,
    ),
    _pg(
        "state-reserved",
        "messages.state: 'reserved' with its (past) deadline, as if a worker had died",
        _update("messages", "state = 'reserved'"),
        runs=True,
    ),
    _pg(
        "state-dead",
        "messages.state: 'dead' without a reason or time (listed as a corrupt dead letter)",
        _update("messages", "state = 'dead'"),
    ),
    _pg(
        "state-parked",
        "messages.state: 'parked' without a slot key (no settle would ever free it; the "
        "worker's sweep puts it back to ready)",
        _update("messages", "state = 'parked'"),
        runs=True,
    ),
    _pg(
        "state-parked-orphan-key",
        "messages.state: 'parked' for a slot of a key nobody holds (the sweep frees the slot)",
        _update("messages", "state = 'parked', slot_key = 'orphan-key'"),
        runs=True,
        shared=_KEY,
    ),
    _pg(
        "available-at-infinity",
        "messages.available_at: 'infinity' (it would never be due)",
        _update("messages", "available_at = 'infinity'"),
    ),
    _pg(
        "available-at-far-future",
        "messages.available_at: year 200000, beyond any eta a datetime can hold",
        _update("messages", "available_at = '200000-01-01'"),
    ),
    _pg(
        "available-at-minus-infinity",
        "messages.available_at: '-infinity' (due at once)",
        _update("messages", "available_at = '-infinity'"),
        runs=True,
    ),
    _pg(
        "token-garbage",
        "messages.token: a token no reserve issued",
        _update("messages", "token = 'not-a-token'"),
        runs=True,
    ),
    _pg(
        "reason-on-ready",
        "messages.reason: a dead-letter reason on a ready message",
        _update("messages", "reason = 'left over'"),
        runs=True,
    ),
    _pg(
        "dead-at-infinity",
        "messages.dead_at: 'infinity' on a ready message",
        _update("messages", "dead_at = 'infinity'"),
        runs=True,
    ),
    _pg(
        "gate-garbage",
        "messages.gate: text that is no gate",
        _update("messages", "gate = 'not a gate'"),
    ),
    _pg(
        "gate-zero-concurrency",
        "messages.gate: a gate of concurrency 0 (well formed, but it could never run)",
        _update("messages", "gate = '- 1 0 some-key'"),
        shared=_KEY,
    ),
    _pg(
        "gate-infinite-interval",
        "messages.gate: a rate of one per infinite interval",
        _update("messages", "gate = 'inf 1 - some-key'"),
        shared=_KEY,
    ),
    _pg(
        "gate-on-ungated",
        "messages.gate: a valid concurrency limit of 1 on a task that had none (it still "
        "runs: nobody else holds the key)",
        _update("messages", "gate = '- 1 1 foreign-key'"),
        runs=True,
        shared=_KEY,
    ),
    _pg(
        "slot-key-on-ready",
        "messages.slot_key: a key on a ready message (no slot is held by it; its settle "
        "frees nothing)",
        _update("messages", "slot_key = 'stray-key'"),
        runs=True,
        shared=_KEY,
    ),
    _pg(
        "admitted-on-ungated",
        "messages.admitted: true on a message without a gate",
        _update("messages", "admitted = true"),
        runs=True,
    ),
]

RECORD_CORRUPTIONS = [
    _pg(
        "record-missing",
        "tasks: the victim's record deleted (the message stays)",
        _statement("DELETE FROM {s}.tasks WHERE id = $1"),
        runs=True,
    ),
    _pg(
        "record-id-renamed",
        "tasks.id: the victim's record moved to another id",
        _update("tasks", "id = id || '-moved'"),
        runs=True,
    ),
    _pg(
        "status-unknown",
        "tasks.status: a status no release writes",
        _update("tasks", "status = 'half-done'"),
    ),
    _pg(
        "status-empty",
        "tasks.status: the empty string",
        _update("tasks", "status = ''"),
    ),
    _pg(
        "record-not-a-task",
        "tasks.record: valid JSON that is not a task",
        _update("tasks", """record = '{"not": "a task"}'"""),
        runs=True,
    ),
    _pg(
        "record-other-task",
        "tasks.record: another task's record under the victim's id",
        _update("tasks", f"record = {OTHER_RECORD}"),
        runs=True,
    ),
    _pg(
        "record-nul-escape",
        "tasks.record: a JSON string holding \\u0000",
        _update("tasks", """record = '"\\u0000"'"""),
        runs=True,
    ),
    _pg(
        "name-unknown",
        "tasks.name: a task name nobody registered",
        _update("tasks", "name = 'no.such.task'"),
        runs=True,
    ),
    _pg(
        "queue-elsewhere",
        "tasks.queue: another queue",
        _update("tasks", "queue = 'elsewhere'"),
        runs=True,
    ),
    _pg(
        "lease-token-garbage",
        "tasks.lease_token: a token no reserve issued",
        _update("tasks", "lease_token = 'not-a-token'"),
        runs=True,
    ),
    _pg(
        "expires-at-past",
        "tasks.expires_at: '-infinity' (the record counts as expired, so absent)",
        _update("tasks", "expires_at = '-infinity'"),
        runs=True,
    ),
    _pg(
        "expires-at-infinity",
        "tasks.expires_at: 'infinity'",
        _update("tasks", "expires_at = 'infinity'"),
        runs=True,
    ),
    _pg(
        "started-at-out-of-range",
        "tasks.started_at: year 200000 on a pending record (no datetime holds it)",
        _update("tasks", "started_at = '200000-01-01', lease_token = 'x'"),
        runs=True,
    ),
    _pg(
        "before-status-garbage",
        "tasks.before_status: a status no release writes",
        _update("tasks", "before_status = 'half-done'"),
        runs=True,
    ),
    _pg(
        "before-token-garbage",
        "tasks.before_token: a token no reserve issued",
        _update("tasks", "before_token = 'not-a-token'"),
        runs=True,
    ),
    _pg(
        "queue-name-garbage",
        "queues.name: the victim's queue renamed to a name no path accepts",
        _statement("UPDATE {s}.queues SET name = 'not a queue!' WHERE $1::text IS NOT NULL"),
        runs=True,
        shared="the queues table: the victim's queue is every good task's",
    ),
]

CORRUPTIONS: list[Corruption] = [*MESSAGE_CORRUPTIONS, *RECORD_CORRUPTIONS]
