"""The workflow store in PostgreSQL beyond the shared WorkflowContract: members of one
chord completing at once through two backends (separate pools), a corrupt state row, a
stopped client holding a workflow's lock, round trips, the migration that adds the
tables, and workflows run end to end by a real worker."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import SCHEMA_VERSION, PostgresBackend, _schema, parse_postgres_url
from bgcoor_postgres._schedules import HOLD_LIMIT_MS
from bgcoor_postgres._testing import SERVER_URL, is_type_lookup, new_schema_name

from bgcoor_core import (
    DuplicateTaskError,
    Reservation,
    Task,
    TaskManager,
    TaskStatus,
    WorkflowFailedError,
    WorkflowStatus,
    chain,
    chord,
    group,
    kit,
)
from bgcoor_core.backends.memory import MemoryStorage
from bgcoor_core.testing import make_task, make_test_codec

pytestmark = pytest.mark.server
URL = Callable[..., str]
NAME = "pg.member"
#: The schema version that added the workflows and parked tables.
WORKFLOWS_VERSION = 4
#: The one that moved their progress into workflow_nodes rows.
NODE_ROWS_VERSION = 5


def open_backend(url: str) -> PostgresBackend:
    return PostgresBackend(parse_postgres_url(url), make_test_codec())


class Submitted:
    def __init__(self, workflow_id: str, tasks: list[Task]) -> None:
        self.id = workflow_id
        self.tasks = tasks


def graph_of(parents: list[list[int]], errback_of: int | None = None) -> dict[str, Any]:
    """A graph's JSON: nodes ``0..n-1`` with these parents, an errback node appended for
    ``errback_of``; its result is the last non-errback node."""
    nodes: list[dict[str, Any]] = [
        {"key": k, "task": NAME, "parents": sorted(p), "inputs": list(p)}
        for k, p in enumerate(parents)
    ]
    result = len(nodes) - 1
    if errback_of is not None:
        nodes[errback_of]["on_error"] = len(nodes)
        nodes.append({"key": len(nodes), "task": NAME, "errback": True})
    return {"nodes": nodes, "result": result, "on_failure": "fail"}


async def submit(
    backend: PostgresBackend,
    graph: dict[str, Any],
    ttl: float | None = 60.0,
    workflow_id: str | None = None,
) -> Submitted:
    workflow_id = workflow_id or f"wf-{uuid.uuid4().hex[:12]}"
    tasks = [make_task(NAME) for _ in graph["nodes"]]
    for node, task in zip(graph["nodes"], tasks, strict=True):
        task.headers = {kit.WORKFLOW_HEADER: workflow_id, kit.NODE_HEADER: str(node["key"])}
        if node.get("parents") or node.get("errback"):
            task.status = TaskStatus.WAITING
    state = kit.WorkflowState.model_validate(
        {
            "id": workflow_id,
            "graph": graph,
            "tasks": [t.id for t in tasks],
            "remaining": [len(n.get("parents", [])) for n in graph["nodes"]],
            "done": [None] * len(tasks),
            "left": len(tasks),
            "ttls": [ttl] * len(tasks),
            "created_at": datetime.now(UTC),
        }
    )
    store = backend.workflow_store(backend)
    assert store is not None
    await store.submit_workflow(state, tasks, [backend.to_message(t) for t in tasks])
    return Submitted(workflow_id, tasks)


def state_of(workflow_id: str, graph: dict[str, Any], tasks: list[Task]) -> kit.WorkflowState:
    """A new workflow's state, as the manager builds it."""
    return kit.WorkflowState.model_validate(
        {
            "id": workflow_id,
            "graph": graph,
            "tasks": [t.id for t in tasks],
            "remaining": [len(n.get("parents", [])) for n in graph["nodes"]],
            "done": [None] * len(tasks),
            "left": len(tasks),
            "ttls": [60.0] * len(tasks),
            "created_at": datetime.now(UTC),
        }
    )


async def take_all(backend: PostgresBackend) -> dict[str, Reservation]:
    taken: dict[str, Reservation] = {}
    while got := await backend.reserve(["default"], lease=60.0, limit=500, timeout=0):
        taken.update({r.task.id: r for r in got})
    return taken


def finished(reservation: Reservation, status: TaskStatus = TaskStatus.SUCCEEDED) -> Task:
    """The member's final record as its worker stores it (the reserve marked it running)."""
    assert reservation.started
    task = reservation.task.started(reservation.token, datetime.now(UTC))
    task.status, task.finished_at = status, datetime.now(UTC)
    task.error = None if status is TaskStatus.SUCCEEDED else "ValueError: test"
    return task


async def complete(backend: PostgresBackend, reservation: Reservation, **kw: Any) -> None:
    store = backend.workflow_store(backend)
    assert store is not None
    await store.complete_member(reservation, finished(reservation, **kw))


async def rows(backend: PostgresBackend, query: str, *args: Any) -> list[asyncpg.Record]:
    schema = f'"{backend.target.schema}"'
    return await backend._db.run(lambda c: c.fetch(query.format(s=schema), *args))


# -- the store -------------------------------------------------------------------------


async def test_the_backend_steps_workflows_only_in_its_own_schema(
    backend: PostgresBackend, pg_url: URL
) -> None:
    assert backend.workflow_store(backend) is backend.workflow_store(backend)
    assert backend.workflow_store(backend) is not None
    other = open_backend(pg_url())
    try:
        assert backend.workflow_store(other) is None
    finally:
        await other.close()
    assert backend.workflow_store(MemoryStorage()) is None


async def test_a_released_member_is_pending_with_its_message_ready(
    backend: PostgresBackend,
) -> None:
    wf = await submit(backend, graph_of([[], [0]]))
    parked = await rows(backend, "SELECT workflow_id, node, id FROM {s}.parked")
    assert [tuple(r) for r in parked] == [(wf.id, 1, wf.tasks[1].id)]
    (first,) = (await take_all(backend)).values()
    await complete(backend, first, status=TaskStatus.SUCCEEDED)
    record = await backend.get(wf.tasks[1].id)
    assert record is not None
    assert record.status is TaskStatus.PENDING  # before a reserve marks it running
    assert record.model_dump(exclude={"status"}) == wf.tasks[1].model_dump(exclude={"status"})
    assert await rows(backend, "SELECT 1 FROM {s}.parked") == []
    (second,) = (await take_all(backend)).values()
    assert second.task == wf.tasks[1].model_copy(update={"status": TaskStatus.WAITING})
    assert second.started  # the reserve marked the record running, as for any task


async def test_a_taken_workflow_id_is_refused_and_stores_nothing(
    backend: PostgresBackend,
) -> None:
    wf = await submit(backend, graph_of([[], [0]]))
    store = backend.workflow_store(backend)
    assert store is not None
    state = await store.get_workflow(wf.id)
    assert state is not None
    tasks = [make_task(NAME) for _ in range(2)]
    tasks[1].status = TaskStatus.WAITING
    for key, task in enumerate(tasks):
        task.headers = {kit.WORKFLOW_HEADER: wf.id, kit.NODE_HEADER: str(key)}
    with pytest.raises(DuplicateTaskError, match=f"workflow {wf.id} already exists"):
        await store.submit_workflow(state, tasks, [backend.to_message(t) for t in tasks])
    assert [await backend.get(t.id) for t in tasks] == [None, None]
    assert len(await take_all(backend)) == 1  # the first submission's root only
    assert len(await rows(backend, "SELECT 1 FROM {s}.parked")) == 1


async def test_a_member_cancelled_while_waiting_leaves_no_parked_message(
    backend: PostgresBackend,
) -> None:
    wf = await submit(backend, graph_of([[], [0]]))
    waiting = await backend.get(wf.tasks[1].id)
    assert waiting is not None
    waiting.status, waiting.finished_at = TaskStatus.CANCELLED, datetime.now(UTC)
    store = backend.workflow_store(backend)
    assert store is not None
    await store.save_member(waiting)  # what manager.cancel() does for a member
    state = await store.get_workflow(wf.id)
    assert state is not None
    assert state.status is WorkflowStatus.FAILED
    assert state.done == [None, TaskStatus.CANCELLED]
    assert await rows(backend, "SELECT 1 FROM {s}.parked") == []
    (first,) = (await take_all(backend)).values()  # the root, already queued, still runs
    await complete(backend, first)
    assert await take_all(backend) == {}
    state = await store.get_workflow(wf.id)
    assert state is not None
    assert state.done == [TaskStatus.SUCCEEDED, TaskStatus.CANCELLED]


# -- members of one chord completing at once -------------------------------------------


async def test_two_backends_completing_200_chord_members_release_the_callback_once(
    pg_url: URL,
) -> None:
    url = pg_url()
    first = open_backend(url)
    second = open_backend(url.replace("temporary=true", "temporary=false"))
    try:
        wf = await submit(first, graph_of([[]] * 200 + [list(range(200))]))
        taken = await take_all(second)
        assert set(taken) == {t.id for t in wf.tasks[:200]}
        await asyncio.gather(
            *(
                complete(first if n % 2 else second, taken[task.id])
                for n, task in enumerate(wf.tasks[:200])
            )
        )
        released = await take_all(first)
        assert list(released) == [wf.tasks[200].id]
        assert await take_all(second) == {}
        store = second.workflow_store(second)
        assert store is not None
        state = await store.get_workflow(wf.id)
        assert state is not None
        assert state.done == [TaskStatus.SUCCEEDED] * 200 + [None]
        assert state.remaining[200] == 0
        assert state.status is WorkflowStatus.RUNNING
        assert await rows(first, "SELECT 1 FROM {s}.parked") == []
        statuses = await rows(first, "SELECT status, count(*) FROM {s}.tasks GROUP BY 1")
        assert dict(map(tuple, statuses)) == {"succeeded": 200, "running": 1}
    finally:
        await second.close()
        await first.close()


# -- per-node rows ----------------------------------------------------------------------


async def node_versions(backend: PostgresBackend) -> dict[int, str]:
    found = await rows(backend, "SELECT node, xmin::text FROM {s}.workflow_nodes")
    return {node: version for node, version in found}


async def test_a_chord_members_step_reads_and_writes_only_its_own_and_the_callbacks_rows(
    backend: PostgresBackend,
) -> None:
    wf = await submit(backend, graph_of([[]] * 50 + [list(range(50))]))
    taken = await take_all(backend)
    await complete(backend, taken[wf.tasks[0].id])  # this process parses the graph
    (before,) = await rows(backend, "SELECT state::text, xmin::text FROM {s}.workflows")
    versions = await node_versions(backend)
    await complete(backend, taken[wf.tasks[1].id])
    after = await node_versions(backend)
    assert {node for node in after if after[node] != versions[node]} == {1, 50}
    (state,) = await rows(backend, "SELECT state::text, xmin::text FROM {s}.workflows")
    assert state[0] == before[0]  # the submitted state is never rewritten
    assert state[1] != before[1]  # its row's scalars are (members left)
    store = backend._workflows
    known = store.parsed.peek(wf.id)
    assert known is not None

    async def lock(conn: Any) -> Any:
        async with conn.transaction():
            return await store._lock(conn, wf.id, known, [2, 50], False)

    locked = await backend._db.run(lock)
    assert (locked.nodes, locked.remaining, locked.done) == ([2, 50], [0, 48], [None, None])
    assert locked.state is None  # known by its digest: not sent again
    fresh = await store.get_workflow(wf.id)
    assert fresh is not None
    assert fresh.done == [TaskStatus.SUCCEEDED] * 2 + [None] * 49
    assert (fresh.remaining[50], fresh.left) == (48, 49)


async def test_a_failing_outcome_loads_every_node_row_only_while_its_workflow_runs(
    backend: PostgresBackend,
) -> None:
    wf = await submit(backend, graph_of([[]] * 10 + [list(range(10))]))
    taken = await take_all(backend)
    await complete(backend, taken[wf.tasks[0].id])  # this process parses the graph
    store = backend._workflows
    known = store.parsed.peek(wf.id)
    assert known is not None

    async def lock(conn: Any) -> list[int]:
        async with conn.transaction():
            locked = await store._lock(conn, wf.id, known, [3, 10], False, True)
            assert locked is not None
            return locked.nodes

    assert await backend._db.run(lock) == list(range(11))  # it may fail the workflow
    await complete(backend, taken[wf.tasks[1].id], status=TaskStatus.DEAD)
    assert await backend._db.run(lock) == [3, 10]  # failed already: its own rows
    await complete(backend, taken[wf.tasks[3].id], status=TaskStatus.DEAD)
    await complete(backend, taken[wf.tasks[4].id])  # still counted: a reopen starts here
    state = await store.get_workflow(wf.id)
    assert state is not None
    assert (state.error or "").startswith("node 1 ")
    assert (state.remaining[10], state.done[10]) == (8, TaskStatus.WAITING)
    assert state.done[:5] == [
        TaskStatus.SUCCEEDED,
        TaskStatus.DEAD,
        None,
        TaskStatus.DEAD,
        TaskStatus.SUCCEEDED,
    ]


# -- ended workflows expire --------------------------------------------------------------


async def test_a_failed_workflow_keeps_its_parked_rows_until_the_sweep_deletes_it(
    backend: PostgresBackend,
) -> None:
    wf = await submit(backend, graph_of([[], [0]]), ttl=0.2)
    (first,) = (await take_all(backend)).values()
    await complete(backend, first, status=TaskStatus.DEAD)
    store = backend.workflow_store(backend)
    assert store is not None
    state = await store.get_workflow(wf.id)
    assert state is not None
    assert state.status is WorkflowStatus.FAILED
    assert state.done == [TaskStatus.DEAD, TaskStatus.WAITING]  # dropped while waiting
    record = await backend.get(wf.tasks[1].id)
    assert record is not None
    assert record.status is TaskStatus.CANCELLED
    assert len(await rows(backend, "SELECT 1 FROM {s}.parked")) == 1  # kept
    await asyncio.sleep(0.4)
    assert await store.get_workflow(wf.id) is None  # expired: read as absent
    assert len(await rows(backend, "SELECT 1 FROM {s}.workflow_nodes")) == 2
    await backend.delete_expired()
    for table in ("workflows", "workflow_nodes", "parked"):
        assert await rows(backend, f"SELECT 1 FROM {{s}}.{table}") == []


async def test_a_workflow_id_is_taken_again_once_its_row_expired(
    backend: PostgresBackend,
) -> None:
    old = await submit(backend, graph_of([[]]), ttl=0.2)
    (only,) = (await take_all(backend)).values()
    await complete(backend, only)  # ended: kept 0.2 s; its graph parsed here
    with pytest.raises(DuplicateTaskError, match="already exists"):
        await submit(backend, graph_of([[], [0]]), workflow_id=old.id)
    await asyncio.sleep(0.4)
    new = await submit(backend, graph_of([[], [0]]), workflow_id=old.id)
    (first,) = (await take_all(backend)).values()
    await complete(backend, first)
    assert list(await take_all(backend)) == [new.tasks[1].id]  # the new graph's child
    store = backend.workflow_store(backend)
    assert store is not None
    state = await store.get_workflow(old.id)
    assert state is not None
    assert state.tasks == [t.id for t in new.tasks]
    assert state.done == [TaskStatus.SUCCEEDED, None]


# -- a state row that cannot be read ---------------------------------------------------


@pytest.mark.parametrize(
    "corrupt",
    [
        '{"id": 1}',
        "OTHER",  # another workflow's state
        "SHORT",  # fewer members than nodes
        "NODE",  # a node row naming no status
        "LOST",  # a node row missing
    ],
    ids=["not-a-state", "another-workflows", "short-members", "unknown-status", "lost-node"],
)
async def test_a_corrupt_workflow_keeps_the_outcome_and_releases_nothing(
    backend: PostgresBackend, corrupt: str, caplog: pytest.LogCaptureFixture
) -> None:
    wf = await submit(backend, graph_of([[], [0]]))
    (text,) = await rows(backend, "SELECT state::text FROM {s}.workflows WHERE id = $1", wf.id)
    state = json.loads(text[0])
    if corrupt == "NODE":
        await rows(backend, "UPDATE {s}.workflow_nodes SET done = 'bogus' WHERE node = 1")
    elif corrupt == "LOST":
        await rows(backend, "DELETE FROM {s}.workflow_nodes WHERE node = 1")
    else:
        if corrupt == "OTHER":
            corrupt = json.dumps({**state, "id": "wf-another"})
        elif corrupt == "SHORT":
            corrupt = json.dumps({**state, "tasks": state["tasks"][:1]})
        update = "UPDATE {s}.workflows SET state = $2::json WHERE id = $1"
        await rows(backend, update, wf.id, corrupt)
    nodes = await rows(backend, "SELECT * FROM {s}.workflow_nodes ORDER BY node")
    (first,) = (await take_all(backend)).values()
    with caplog.at_level(logging.WARNING, logger="bgcoor.postgres"):
        await complete(backend, first)  # not raised: the member's outcome is kept
    assert f"corrupt workflow {wf.id}" in caplog.text
    record = await backend.get(wf.tasks[0].id)
    assert record is not None
    assert record.status is TaskStatus.SUCCEEDED
    expiry = await rows(backend, "SELECT expires_at FROM {s}.tasks WHERE id = $1", wf.tasks[0].id)
    assert expiry[0][0] is None  # no TTL: its workflow has not ended
    assert await take_all(backend) == {}  # nothing released on a guess
    waiting = await backend.get(wf.tasks[1].id)
    assert waiting is not None
    assert waiting.status is TaskStatus.WAITING
    (kept,) = await rows(backend, "SELECT state::text FROM {s}.workflows WHERE id = $1", wf.id)
    assert kept[0] == (corrupt if corrupt.startswith("{") else text[0])  # left as it was
    assert await rows(backend, "SELECT * FROM {s}.workflow_nodes ORDER BY node") == nodes
    store = backend.workflow_store(backend)
    assert store is not None
    with pytest.raises(kit.CorruptRecordError, match=f"corrupt workflow {wf.id}"):
        await store.get_workflow(wf.id)
    with pytest.raises(kit.CorruptRecordError, match=f"corrupt workflow {wf.id}"):
        await store.cancel_workflow(wf.id)
    assert len(await rows(backend, "SELECT 1 FROM {s}.parked")) == 1  # cancel rolled back


# -- a client stopped inside a step ----------------------------------------------------


async def test_a_stopped_client_holding_a_workflow_stalls_its_members_only_briefly(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    wf = await submit(backend, graph_of([[], [0]]))
    (first,) = (await take_all(backend)).values()
    frozen = raw.transaction()
    await frozen.start()
    lock = backend._workflows.sql.lock
    await raw.fetch(lock, wf.id, None, [], True, False)  # ... and the client stops here
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(complete(backend, first), timeout=10)
    waited = asyncio.get_running_loop().time() - started
    assert HOLD_LIMIT_MS / 1000 * 0.5 < waited < HOLD_LIMIT_MS / 1000 + 3
    assert list(await take_all(backend)) == [wf.tasks[1].id]
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await raw.fetchval("SELECT 1")  # the frozen one's session is gone


# -- round trips -----------------------------------------------------------------------


async def test_a_member_step_costs_a_few_statements(pg_url: URL) -> None:
    backend = open_backend(pg_url())
    seen: list[str] = []
    backend._db.observer = lambda query: None if is_type_lookup(query) else seen.append(query)
    names = {sql: name for name, sql in vars(backend._workflows.sql).items()}
    names |= {backend.sql.complete: "complete", backend.sql.enqueue: "enqueue"}
    try:
        await _count_member_steps(backend, seen, names)
    finally:
        await backend.close()


async def _count_member_steps(
    backend: PostgresBackend, seen: list[str], names: dict[str, str]
) -> None:
    wf = await submit(backend, graph_of([[], [0], [1]], errback_of=1))
    submitted = Counter(names.get(q, q.split()[0].upper()) for q in seen)
    assert submitted["enqueue"] == 1
    assert submitted["submit"] == 1
    (first,) = (await take_all(backend)).values()

    seen.clear()

    def counted() -> Counter[str]:
        found = Counter(names.get(q, q.split()[0].upper()) for q in seen)
        seen.clear()
        return found

    await complete(backend, first)  # releases node 1
    assert counted() == Counter({"BEGIN;": 1, "lock": 1, "complete": 1, "step": 1, "COMMIT;": 1})
    (second,) = (await take_all(backend)).values()
    counted()
    await complete(backend, second, status=TaskStatus.DEAD)  # 2 cancelled, 3 released
    wanted = {"BEGIN;": 1, "lock": 1, "complete": 1, "members": 1, "step": 1, "COMMIT;": 1}
    assert counted() == Counter(wanted)
    assert list(await take_all(backend)) == [wf.tasks[3].id]  # the errback


# -- the migration that adds the tables ------------------------------------------------


async def test_a_version_3_schema_gains_the_workflow_tables_and_keeps_its_data(
    monkeypatch: pytest.MonkeyPatch, raw: asyncpg.Connection[Any]
) -> None:
    schema = new_schema_name()
    url = f"{SERVER_URL}?schema={schema}"
    try:
        with monkeypatch.context() as older:  # a release from before workflows
            older.setattr(_schema, "SCHEMA_VERSION", WORKFLOWS_VERSION - 1)
            old = open_backend(url)
            task = make_task()
            await old.enqueue_atomically([task], [old.to_message(task)])
            await old.close()
        for table in ("workflows", "parked"):
            assert await raw.fetchval("SELECT to_regclass($1)", f"{schema}.{table}") is None

        strict = open_backend(f"{url}&auto_migrate=false")
        assert strict.workflow_store(strict) is not None
        with pytest.raises(_schema.SchemaNotMigratedError, match="version 3"):
            await strict.get(task.id)
        lines = await strict.migrate()
        assert lines == [
            f"postgresql schema {schema}: version {n} ({_schema.MIGRATIONS[n - 1][0]})"
            for n in range(WORKFLOWS_VERSION, SCHEMA_VERSION + 1)
        ]
        assert "workflows" in lines[0]
        await strict.close()

        new = open_backend(url)
        try:
            assert await new.get(task.id) == task
            wf = await submit(new, graph_of([[], [0]]))
            taken = await take_all(new)
            assert set(taken) == {task.id, wf.tasks[0].id}
            await complete(new, taken[wf.tasks[0].id])
            assert list(await take_all(new)) == [wf.tasks[1].id]
        finally:
            await new.close()
        versions = await raw.fetch(f'SELECT version FROM "{schema}".migrations ORDER BY 1')
        assert [v[0] for v in versions] == list(range(1, SCHEMA_VERSION + 1))
    finally:
        await raw.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def test_a_version_4_workflow_moves_its_progress_into_node_rows_and_runs_on(
    monkeypatch: pytest.MonkeyPatch, raw: asyncpg.Connection[Any]
) -> None:
    schema = new_schema_name()
    url = f"{SERVER_URL}?schema={schema}"
    s = f'"{schema}"'
    try:
        with monkeypatch.context() as older:  # a release whose states held the progress
            older.setattr(_schema, "SCHEMA_VERSION", NODE_ROWS_VERSION - 1)
            old = open_backend(url)
            tasks = [make_task(NAME) for _ in range(3)]
            workflow_id = "wf-version-4"
            for key, task in enumerate(tasks):
                task.headers = {kit.WORKFLOW_HEADER: workflow_id, kit.NODE_HEADER: str(key)}
            tasks[2].status = TaskStatus.WAITING
            graph = graph_of([[], [], [0, 1]])
            state = state_of(workflow_id, graph, tasks)
            state.done[1], state.remaining[2], state.left = TaskStatus.SUCCEEDED, 1, 2
            tasks[1].status = TaskStatus.SUCCEEDED
            await old.enqueue_atomically(tasks, [old.to_message(tasks[0])])
            await raw.execute(
                f"INSERT INTO {s}.workflows (id, status, state) VALUES ($1, 'running', $2)",
                workflow_id,
                state.model_dump_json(),
            )
            pending = tasks[2].model_copy(update={"status": TaskStatus.PENDING})
            message = old.to_message(tasks[2])
            await raw.execute(
                f"INSERT INTO {s}.parked (workflow_id, node, id, queue, priority, body, "
                "record) VALUES ($1, 2, $2, 'default', 0, $3, $4)",
                workflow_id,
                tasks[2].id,
                message.body,
                pending.model_dump_json(),
            )
            await old.close()
        new = open_backend(url)
        try:
            store = new.workflow_store(new)
            assert store is not None
            migrated = await store.get_workflow(workflow_id)
            assert migrated is not None
            assert migrated.model_dump() == state.model_dump()
            (first,) = (await take_all(new)).values()
            await complete(new, first)
            assert list(await take_all(new)) == [tasks[2].id]
            after = await store.get_workflow(workflow_id)
            assert after is not None
            assert (after.done, after.remaining, after.left) == (
                [TaskStatus.SUCCEEDED, TaskStatus.SUCCEEDED, None],
                [0, 0, 0],
                1,
            )
        finally:
            await new.close()
    finally:
        await raw.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


# -- end to end, with a worker ---------------------------------------------------------


@pytest.fixture
def tasks(manager: TaskManager) -> Any:
    class Tasks:
        runs: list[str] = []

        @staticmethod
        @manager.task(name="pgwf.add")
        async def add(a: int, b: int = 0) -> int:
            Tasks.runs.append("add")
            return a + b

        @staticmethod
        @manager.task(name="pgwf.total")
        async def total(values: list[int]) -> int:
            Tasks.runs.append("total")
            return sum(values)

        @staticmethod
        @manager.task(name="pgwf.boom", max_retries=0)
        async def boom(x: int) -> int:
            raise ValueError(f"boom {x}")

        @staticmethod
        @manager.task(name="pgwf.say")
        async def say(word: str) -> str:
            Tasks.runs.append(word)
            return word

    Tasks.runs = []
    return Tasks


async def test_a_chord_of_a_chain_and_a_group_runs_on_a_real_worker(
    manager: TaskManager, tasks: Any
) -> None:
    adds = [tasks.add.s(i) for i in range(20)]
    header = group([chain(tasks.add.s(1, 2), tasks.add.s(10)), *adds])
    async with manager.worker(8):
        handle = await chord(header, tasks.total.s()).enqueue()
        assert await handle.result(timeout=20) == 13 + sum(range(20))
        assert await handle.status() == "succeeded"
    assert tasks.runs.count("total") == 1
    state = await handle.state()
    assert state.status is WorkflowStatus.SUCCEEDED
    assert isinstance(manager.storage, PostgresBackend)
    expiry = await rows(manager.storage, "SELECT count(*) FROM {s}.tasks WHERE expires_at IS NULL")
    assert expiry[0][0] == 0  # ended: every member record has its TTL


async def test_a_failing_chord_member_cancels_the_callback_on_a_real_worker(
    manager: TaskManager, tasks: Any
) -> None:
    header = group([*(tasks.add.s(i) for i in range(5)), tasks.boom.s(1)])
    async with manager.worker(4):
        handle = await chord(header, tasks.total.s()).enqueue()
        with pytest.raises(WorkflowFailedError, match=r"pgwf\.boom"):
            await handle.result(timeout=20)
    state = await handle.state()
    callback = await manager.storage.get(state.tasks[-1])
    assert callback is not None
    assert callback.status is TaskStatus.CANCELLED
    assert callback.error == "cancelled: its workflow ended"
    assert "total" not in tasks.runs
