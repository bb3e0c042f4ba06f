"""SQLite workflow store specifics: the schema migration that adds its tables, parked
messages out of the reserve's sight, real processes stepping one chord on one file,
damaged state rows. Workflows end to end through a ``TaskManager`` are
tests/test_workflows.py's, on every backend.

The fan-in rule itself is checked for every store by ``WorkflowContract`` (conformance).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bgcoor_core import (
    CorruptRecordError,
    DuplicateTaskError,
    MemoryStorage,
    TaskStatus,
    WorkflowStatus,
)
from bgcoor_core._broker import Reservation
from bgcoor_core._composition import Graph, Node
from bgcoor_core._task import Task
from bgcoor_core._workflows import (
    NODE_HEADER,
    WORKFLOW_HEADER,
    WorkflowState,
    WorkflowStore,
    new_state,
)
from bgcoor_core.backends.sqlite import SQLiteBackend, SQLiteOptions
from bgcoor_core.backends.sqlite._schema import MIGRATIONS, SCHEMA_VERSION
from bgcoor_core.backends.sqlite._workflow_rows import NODES, PROGRESS, SUBMITTED
from bgcoor_core.backends.sqlite._workflows import CANCELLED_ERROR, SQLiteWorkflows
from bgcoor_core.testing import make_task, make_test_codec

NAME = "wf.member"
NOT_UTF8 = "CAST(x'41ff42' AS TEXT)"


@pytest_asyncio.fixture
async def backend(tmp_path: Path) -> AsyncIterator[SQLiteBackend]:
    backend = SQLiteBackend(str(tmp_path / "w.db"), make_test_codec())
    yield backend
    await backend.close()


def _store(backend: SQLiteBackend) -> WorkflowStore:
    store = backend.workflow_store(backend)
    assert store is not None
    return store


def _graph(parents: list[list[int]]) -> Graph:
    nodes = [Node(key=k, task=NAME, parents=p, inputs=list(p)) for k, p in enumerate(parents)]
    return Graph(nodes=nodes, result=len(nodes) - 1)


async def _submit(
    backend: SQLiteBackend,
    parents: list[list[int]],
    *,
    queues: dict[int, str] | None = None,
    workflow_id: str | None = None,
) -> tuple[str, list[Task]]:
    """A workflow of ``NAME`` nodes with these parents; node ``k`` on ``queues[k]``."""
    graph = _graph(parents)
    workflow_id = workflow_id or f"wf-{uuid.uuid4().hex[:12]}"
    tasks = []
    for node in graph.nodes:
        queue = (queues or {}).get(node.key, "default")
        task = make_task(NAME, queue=queue)
        task.headers = {WORKFLOW_HEADER: workflow_id, NODE_HEADER: str(node.key)}
        if node.parents:
            task.status = TaskStatus.WAITING
        tasks.append(task)
    state = new_state(workflow_id, graph, tasks, [60.0] * len(tasks), datetime.now(UTC))
    await _store(backend).submit_workflow(state, tasks, [backend.to_message(t) for t in tasks])
    return workflow_id, tasks


async def _succeed(backend: SQLiteBackend, reservation: Reservation, result: object = None) -> None:
    assert reservation.started  # the reserve marked it running
    task = reservation.task.started(reservation.token, datetime.now(UTC))
    task.status, task.result, task.finished_at = TaskStatus.SUCCEEDED, result, datetime.now(UTC)
    await _store(backend).complete_member(reservation, task)


def _sql(backend: SQLiteBackend, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Read or write with a raw client, as an operator or another program might."""
    with sqlite3.connect(backend.db.path) as conn:
        return conn.execute(sql, params).fetchall()


# -- the store and its tables -----------------------------------------------------------


async def test_the_backend_is_its_own_workflow_store(backend: SQLiteBackend) -> None:
    assert isinstance(backend.workflow_store(backend), SQLiteWorkflows)
    assert backend.workflow_store(MemoryStorage()) is None  # no one transaction with it


async def test_a_version_3_file_gets_the_workflow_tables_on_open(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    old = make_task("old.task")
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:3]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 3")
        conn.execute(
            "INSERT INTO tasks (id, name, queue, status, record) VALUES (?, ?, ?, ?, ?)",
            (old.id, old.name, old.queue, old.status.value, old.model_dump_json()),
        )
    backend = SQLiteBackend(str(path), make_test_codec())
    assert await backend.migrate() == [
        f"{path}: schema version {v}" for v in range(4, SCHEMA_VERSION + 1)
    ]
    workflow_id, _ = await _submit(backend, [[], [0]])
    state = await _store(backend).get_workflow(workflow_id)
    assert state is not None
    assert state.status is WorkflowStatus.RUNNING
    assert await backend.get(old.id) == old  # the file's own tasks are kept
    await backend.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"workflows", "parked", "workflow_nodes"} <= tables


async def test_a_version_4_file_moves_each_nodes_progress_into_a_row(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    graph = _graph([[], [0], [0, 1]])
    tasks = [make_task(NAME) for _ in graph.nodes]
    state = new_state("wf-v4", graph, tasks, [60.0] * 3, datetime.now(UTC))
    progress = {"status": "running", "remaining": [0, 0, 1], "done": ["succeeded", None, None]}
    with sqlite3.connect(path) as conn:
        for step in MIGRATIONS[:4]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 4")
        conn.execute(  # as version 4 wrote it: every node's progress in one JSON, no left
            "INSERT INTO workflows (id, status, state, progress) VALUES (?, ?, ?, ?)",
            ("wf-v4", "running", state.model_dump_json(), json.dumps({**progress, "left": -1})),
        )
    backend = SQLiteBackend(str(path), make_test_codec())
    assert await backend.migrate() == [
        f"{path}: schema version {v}" for v in range(5, SCHEMA_VERSION + 1)
    ]
    moved = await _store(backend).get_workflow("wf-v4")
    assert moved is not None
    assert (moved.remaining, moved.done, moved.left) == (
        [0, 0, 1],
        [TaskStatus.SUCCEEDED, None, None],
        2,
    )
    await backend.close()


async def test_parked_messages_stay_out_of_messages_until_released(
    backend: SQLiteBackend,
) -> None:
    workflow_id, tasks = await _submit(backend, [[], [0], [1]])
    assert (await backend.stats("default")).ready == 1  # the root only
    assert _sql(backend, "SELECT node FROM parked WHERE workflow_id = ?", workflow_id) == [
        (1,),
        (2,),
    ]
    [root] = await backend.reserve(["default"], lease=30)
    await _succeed(backend, root, 1)
    # released: its record pending, its message ready, and its parked row gone
    record = await backend.get(tasks[1].id)
    assert record is not None
    assert record.status is TaskStatus.PENDING
    assert (await backend.stats("default")).ready == 1
    assert _sql(backend, "SELECT node FROM parked") == [(2,)]
    [second] = await backend.reserve(["default"], lease=30)
    assert second.task.id == tasks[1].id


async def test_a_release_wakes_a_consumer_waiting_on_this_backend(tmp_path: Path) -> None:
    backend = SQLiteBackend(
        str(tmp_path / "wake.db"), make_test_codec(), SQLiteOptions(poll_interval=5.0)
    )
    _, tasks = await _submit(backend, [[], [0]])
    [root] = await backend.reserve(["default"], lease=30)
    waiting = asyncio.create_task(backend.reserve(["default"], lease=30, timeout=4))
    await asyncio.sleep(0.1)  # it found nothing and sleeps until woken (or 5 s pass)
    started = time.monotonic()
    await _succeed(backend, root)
    [released] = await asyncio.wait_for(waiting, 4)
    assert released.task.id == tasks[1].id
    assert time.monotonic() - started < 2.0  # well before the next poll
    await backend.close()


async def test_a_taken_workflow_id_or_message_id_stores_nothing(backend: SQLiteBackend) -> None:
    workflow_id, _ = await _submit(backend, [[]])
    before = _sql(backend, "SELECT count(*) FROM tasks")
    with pytest.raises(DuplicateTaskError, match=f"workflow {workflow_id} already exists"):
        await _submit(backend, [[], [0]], workflow_id=workflow_id)
    # a waiting member whose id is already a message (pushed without a record)
    graph = _graph([[], [0]])
    tasks = [make_task(NAME), make_task(NAME, status=TaskStatus.WAITING)]
    for key, task in enumerate(tasks):
        task.headers = {WORKFLOW_HEADER: "wf-clash", NODE_HEADER: str(key)}
    await backend.push_messages([backend.to_message(tasks[1])])
    state = new_state("wf-clash", graph, tasks, [None, None], datetime.now(UTC))
    with pytest.raises(DuplicateTaskError, match=tasks[1].id):
        await _store(backend).submit_workflow(state, tasks, [backend.to_message(t) for t in tasks])
    assert await _store(backend).get_workflow("wf-clash") is None
    assert _sql(backend, "SELECT count(*) FROM tasks") == before
    assert _sql(backend, "SELECT count(*) FROM parked WHERE workflow_id = 'wf-clash'") == [(0,)]
    assert (await backend.stats("default")).ready == 2  # the first root, the pushed one


async def test_cancelling_drops_parked_messages_and_cancels_their_records(
    backend: SQLiteBackend,
) -> None:
    workflow_id, tasks = await _submit(backend, [[], [0], [1]])
    assert await _store(backend).cancel_workflow(workflow_id) is True
    assert _sql(backend, "SELECT count(*) FROM parked") == [(0,)]
    for task in tasks:
        record = await backend.get(task.id)
        assert record is not None
        assert (record.status, record.error) == (TaskStatus.CANCELLED, CANCELLED_ERROR)
        assert record.finished_at is not None
    expires = _sql(backend, "SELECT expires_at FROM tasks")
    assert all(at is not None and at > time.time() + 50 for (at,) in expires)  # ttl 60
    # the root's message is still queued: a worker finds its record final and acks it
    [root] = await backend.reserve(["default"], lease=30)
    assert not root.started


def test_a_row_keeps_every_field_of_a_state() -> None:
    """A step rewrites only the progress: a field added to WorkflowState must be
    placed (never changed, or changed by steps) or it would be lost."""
    assert set(WorkflowState.model_fields) == PROGRESS | NODES | SUBMITTED
    assert not PROGRESS & SUBMITTED
    assert not NODES & (PROGRESS | SUBMITTED)


async def test_a_step_rewrites_only_the_progress_and_its_nodes_rows(
    backend: SQLiteBackend,
) -> None:
    # 0 -> 1, and 2 alone: the step of 0 touches the rows of 0 and 1, never 2's
    workflow_id, _ = await _submit(backend, [[], [0], []])
    [(submitted,)] = _sql(backend, "SELECT state FROM workflow_graphs")
    _sql(backend, "UPDATE workflow_nodes SET remaining = 7 WHERE node = 2")  # a tracer
    [root, _other] = await backend.reserve(["default"], lease=30, limit=2)
    await _succeed(backend, root)
    [(state,)] = _sql(backend, "SELECT state FROM workflow_graphs")
    [(progress, status)] = _sql(backend, "SELECT progress, status FROM workflows")
    assert state == submitted
    assert json.loads(progress) == {
        "status": "running",
        "left": 2,
        "error": None,
        "finished_at": None,
    }
    assert status == "running"
    rows = _sql(backend, "SELECT node, remaining, done FROM workflow_nodes ORDER BY node")
    assert rows == [(0, 0, "succeeded"), (1, 0, None), (2, 7, None)]
    again = await _store(backend).get_workflow(workflow_id)
    assert again is not None
    assert (again.done, again.remaining) == ([TaskStatus.SUCCEEDED, None, None], [0, 0, 7])


async def test_an_expired_workflow_is_deleted_with_its_rows(backend: SQLiteBackend) -> None:
    workflow_id, _tasks = await _submit(backend, [[]])
    [root] = await backend.reserve(["default"], lease=30)
    await _succeed(backend, root)
    [(expires_at,)] = _sql(backend, "SELECT expires_at FROM workflows")
    assert expires_at == pytest.approx(time.time() + 60, abs=5)  # its member's TTL
    _sql(backend, "UPDATE workflows SET expires_at = 1")
    assert await _store(backend).get_workflow(workflow_id) is None  # gone at once
    await backend.delete_expired()
    for table in ("workflows", "workflow_graphs", "workflow_nodes", "parked"):
        assert _sql(backend, f"SELECT count(*) FROM {table}") == [(0,)]


# -- several processes, one file --------------------------------------------------------

MEMBERS = 200

# Waits for the go file, then settles every header member it can reserve (the callback
# sits on its own queue, never reserved here). "complete" settles through
# complete_member, "save" through save_member and then ack: both paths race.
_SETTLER = textwrap.dedent(
    """
    import asyncio, datetime, os, sys, time
    from bgcoor_core import TaskStatus
    from bgcoor_core.backends.sqlite import SQLiteBackend
    from bgcoor_core.testing import make_test_codec

    async def main(path, go, mode):
        backend = SQLiteBackend(path, make_test_codec())
        store = backend.workflow_store(backend)
        await backend.stats("default")
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.001)
        done = 0
        while got := await backend.reserve(["default"], lease=60, limit=3, timeout=0.2):
            for r in got:
                task = r.task.started(r.token, datetime.datetime.now(datetime.UTC))
                task.status = TaskStatus.SUCCEEDED
                task.result = int(task.headers["bgcoor-node"])
                task.finished_at = datetime.datetime.now(datetime.UTC)
                if mode == "complete":
                    await store.complete_member(r, task)
                else:
                    await store.save_member(task)
                    await backend.ack(r)
                done += 1
        await backend.close()
        print(done, flush=True)

    asyncio.run(main(*sys.argv[1:]))
    """
)


async def test_two_processes_settling_one_chord_release_its_callback_once(
    backend: SQLiteBackend, tmp_path: Path
) -> None:
    parents: list[list[int]] = [[] for _ in range(MEMBERS)] + [list(range(MEMBERS))]
    workflow_id, tasks = await _submit(backend, parents, queues={MEMBERS: "callback"})
    script, go = tmp_path / "settler.py", tmp_path / "go"
    script.write_text(_SETTLER)
    settlers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            backend.db.path,
            str(go),
            mode,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for mode in ("complete", "save")
    ]
    try:
        for settler in settlers:
            assert settler.stdout is not None
            assert (await settler.stdout.readline()).strip() == b"ready"
        go.write_text("")
        results = await asyncio.wait_for(
            asyncio.gather(*(settler.communicate() for settler in settlers)), 60
        )
    finally:
        for settler in settlers:
            if settler.returncode is None:
                settler.kill()
                await settler.wait()
    assert [settler.returncode for settler in settlers] == [0, 0], [e for _, e in results]
    assert [err for _, err in results] == [b"", b""]
    counts = [int(out.strip()) for out, _ in results]
    assert sum(counts) == MEMBERS
    assert min(counts) > 0, counts  # both really took part
    state = await _store(backend).get_workflow(workflow_id)
    assert state is not None
    assert state.done == [TaskStatus.SUCCEEDED] * MEMBERS + [None]
    assert state.remaining[MEMBERS] == 0
    [callback] = await backend.reserve(["callback"], lease=30, limit=10)
    assert callback.task.id == tasks[MEMBERS].id
    assert await backend.reserve(["callback", "default"], lease=30, limit=10) == []
    assert _sql(backend, "SELECT count(*) FROM parked") == [(0,)]


# -- damaged state rows -----------------------------------------------------------------


def _miscount(progress: str) -> str:
    return json.dumps({**json.loads(progress), "left": 5})


@pytest.mark.parametrize(
    ("column", "damage", "problem"),
    [
        ("state", "'{not json'", "no workflow state"),
        ("state", NOT_UTF8, "no workflow state"),
        ("state", "'{}'", "no workflow state"),
        ("graph", "DELETE FROM workflow_graphs", "no row in workflow_graphs"),
        ("progress", "'{}'", "no workflow progress"),
        ("progress", "miscount", "counts 5 members left"),
        ("nodes", "DELETE FROM workflow_nodes WHERE node = 1", "its node 1 has no row"),
        ("nodes", "UPDATE workflow_nodes SET done = 'won' WHERE node = 0", "done as 'won'"),
        ("nodes", "UPDATE workflow_nodes SET remaining = -2", "has -2 parents left"),
    ],
)
async def test_a_damaged_row_fails_only_its_workflow_and_keeps_the_outcome(
    backend: SQLiteBackend,
    caplog: pytest.LogCaptureFixture,
    column: str,
    damage: str,
    problem: str,
) -> None:
    broken_id, broken = await _submit(backend, [[], [0]], queues={0: "broken"})
    sound_id, sound = await _submit(backend, [[], [0]])
    if damage == "miscount":
        [(progress,)] = _sql(backend, "SELECT progress FROM workflows WHERE id = ?", broken_id)
        damaged = _miscount(progress)
        _sql(backend, "UPDATE workflows SET progress = ? WHERE id = ?", damaged, broken_id)
    elif column in ("nodes", "graph"):  # a statement of its own, on that workflow only
        which = "workflow_id" if column == "nodes" else "id"
        joint = " AND " if "WHERE" in damage else " WHERE "
        _sql(backend, f"{damage}{joint}{which} = ?", broken_id)
    else:
        table = "workflow_graphs" if column == "state" else "workflows"
        _sql(backend, f"UPDATE {table} SET {column} = {damage} WHERE id = ?", broken_id)
    [member] = await backend.reserve(["broken"], lease=30)
    with caplog.at_level(logging.ERROR, logger="bgcoor.sqlite"):
        await _succeed(backend, member, 7)  # no error: the outcome is stored and acked
    record = await backend.get(broken[0].id)
    assert record is not None
    assert (record.status, record.result) == (TaskStatus.SUCCEEDED, 7)
    assert (await backend.stats("broken")).ready == 0
    [logged] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert broken_id in logged
    assert problem in logged
    waiting = await backend.get(broken[1].id)
    assert waiting is not None
    assert waiting.status is TaskStatus.WAITING  # not advanced
    with pytest.raises(CorruptRecordError, match=f"workflow {broken_id}.*{problem}"):
        await _store(backend).get_workflow(broken_id)
    with pytest.raises(CorruptRecordError, match=f"workflow {broken_id}"):
        await _store(backend).cancel_workflow(broken_id)
    # the other workflow steps as ever
    [root] = await backend.reserve(["default"], lease=30)
    await _succeed(backend, root)
    [released] = await backend.reserve(["default"], lease=30)
    assert released.task.id == sound[1].id
    state = await _store(backend).get_workflow(sound_id)
    assert state is not None
    assert state.done == [TaskStatus.SUCCEEDED, None]


async def test_a_member_its_state_does_not_list_is_not_counted(
    backend: SQLiteBackend, caplog: pytest.LogCaptureFixture
) -> None:
    workflow_id, _ = await _submit(backend, [[], [0]])
    [member] = await backend.reserve(["default"], lease=30)
    member.task.headers[NODE_HEADER] = "1"  # claims to be another node
    with caplog.at_level(logging.ERROR, logger="bgcoor.sqlite"):
        await _succeed(backend, member)
    assert any(f"node 1 is not task {member.task.id}" in r.getMessage() for r in caplog.records)
    state = await _store(backend).get_workflow(workflow_id)
    assert state is not None
    assert state.done == [None, None]
