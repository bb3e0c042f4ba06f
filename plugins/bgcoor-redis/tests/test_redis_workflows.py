"""The Redis workflow store beyond the shared WorkflowContract (which tests/test_conformance.py
runs for the ``redis`` scheme): two backends completing one chord at once, one script call
per member outcome, records rewritten in place, damaged workflow hashes, key expiry, a dead
member requeued into its failed workflow (parked messages kept, TTLs lifted). Workflows
end to end through a ``TaskManager`` are tests/test_workflows.py's, on every backend."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from bgcoor_redis._scripts import WORKFLOW_FAILURES, WORKFLOW_NAMES, scripts
from bgcoor_redis._workflows import RedisWorkflows

from bgcoor_core import (
    Backends,
    CorruptRecordError,
    DuplicateTaskError,
    InvalidTransitionError,
    MemoryStorage,
    Reservation,
    Task,
    TaskStatus,
    WorkflowStatus,
)
from bgcoor_core._admin import requeue_dead
from bgcoor_core._composition import Graph, Node
from bgcoor_core._workflows import _FAILURES, NODE_HEADER, WORKFLOW_HEADER, new_state
from bgcoor_core.testing import LONG_LEASE, make_task

pytestmark = pytest.mark.server

Q = "default"
NAME = "wf.member"


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url.split("?")[0])
    yield client
    await client.aclose()


def store_of(backend: RedisBackend) -> RedisWorkflows:
    store = backend.workflow_store(backend)
    assert store is not None
    return store


def chord_graph(width: int) -> Graph:
    nodes = [Node(key=k, task=NAME) for k in range(width)]
    header = list(range(width))
    nodes.append(Node(key=width, task=NAME, parents=header, inputs=[header]))
    return Graph(nodes=nodes, result=width)


async def submit(
    backend: RedisBackend, graph: Graph, ttl: float | None = 60.0, payload: Any = None
) -> tuple[str, list[Task]]:
    workflow_id = f"wf-{uuid.uuid4().hex[:12]}"
    tasks = [make_task(NAME, payload=payload) for _ in graph.nodes]
    for node, task in zip(graph.nodes, tasks, strict=True):
        task.headers = {WORKFLOW_HEADER: workflow_id, NODE_HEADER: str(node.key)}
        if node.parents or node.errback:
            task.status = TaskStatus.WAITING
    state = new_state(workflow_id, graph, tasks, [ttl] * len(tasks), datetime.now(UTC))
    await store_of(backend).submit_workflow(state, tasks, [backend.to_message(t) for t in tasks])
    return workflow_id, tasks


async def take_all(backend: RedisBackend) -> dict[str, Reservation]:
    taken: dict[str, Reservation] = {}
    while got := await backend.reserve([Q], lease=LONG_LEASE, limit=100, timeout=0):
        taken.update({r.task.id: r for r in got})
    return taken


def outcome(reservation: Reservation, status: TaskStatus = TaskStatus.SUCCEEDED) -> Task:
    task = reservation.task.started(reservation.token, datetime.now(UTC))
    task.status, task.result = status, reservation.task.id
    task.error = None if status is TaskStatus.SUCCEEDED else "ValueError: no"
    task.finished_at = datetime.now(UTC)
    return task


async def test_the_backend_is_the_workflow_store_of_its_own_keys(
    backend: RedisBackend, redis_url: str
) -> None:
    assert isinstance(backend.workflow_store(backend), RedisWorkflows)
    assert backend.workflow_store(RedisBackend(redis_url)) is not None  # same keys
    assert backend.workflow_store(RedisBackend(redis_url + "-other")) is None
    assert backend.workflow_store(MemoryStorage()) is None


async def test_two_backends_completing_a_200_member_chord_release_the_callback_once(
    redis_url: str,
) -> None:
    first, second = RedisBackend(redis_url), RedisBackend(redis_url)
    try:
        workflow_id, tasks = await submit(first, chord_graph(200))
        taken = await take_all(first)
        assert set(taken) == {t.id for t in tasks[:200]}
        ordered = [taken[t.id] for t in tasks[:200]]
        await asyncio.gather(
            *(
                store_of(first if at % 2 else second).complete_member(r, outcome(r))
                for at, r in enumerate(ordered)
            )
        )
        assert (await first.get(tasks[200].id)).status is TaskStatus.PENDING  # type: ignore[union-attr]
        released = await take_all(second)
        assert list(released) == [tasks[200].id]
        state = await store_of(second).get_workflow(workflow_id)
        assert state is not None
        assert state.remaining[200] == 0
        assert state.done == [TaskStatus.SUCCEEDED] * 200 + [None]
        assert first.link().round_trips > 0
        assert second.link().round_trips > 0
    finally:
        await first.close()
        await second.close()


async def test_a_member_outcome_is_one_script_call_as_a_lone_task_is(
    backend: RedisBackend,
) -> None:
    store = store_of(backend)
    _, tasks = await submit(backend, chord_graph(3))
    lone = make_task(NAME)
    await backend.enqueue_atomically([lone], [backend.to_message(lone)])
    taken = await take_all(backend)
    link = backend.link()
    for name in ("wf_complete", "wf_save", "complete"):  # cached, as after a server's first
        await link.load(scripts()[name])
    for member in tasks[:3]:  # the last one also releases the callback
        trips, commands = link.round_trips, link.commands
        await store.complete_member(taken[member.id], outcome(taken[member.id]))
        assert (link.round_trips - trips, link.commands - commands) == (1, 1)
    trips, commands = link.round_trips, link.commands
    await backend.complete(taken[lone.id], outcome(taken[lone.id]), ttl=60)
    assert (link.round_trips - trips, link.commands - commands) == (1, 1)
    trips, commands = link.round_trips, link.commands
    with pytest.raises(InvalidTransitionError):  # final already: refused, in one call
        await store.save_member(outcome(taken[tasks[0].id]))
    assert link.commands - commands == 1


async def test_a_second_workflow_with_the_same_id_is_refused_and_stores_nothing(
    backend: RedisBackend,
) -> None:
    workflow_id, _ = await submit(backend, chord_graph(1))
    again = [make_task(NAME), make_task(NAME)]
    for key, task in enumerate(again):
        task.headers = {WORKFLOW_HEADER: workflow_id, NODE_HEADER: str(key)}
    state = new_state(workflow_id, chord_graph(1), again, [None, None], datetime.now(UTC))
    with pytest.raises(DuplicateTaskError, match="workflow"):
        await store_of(backend).submit_workflow(
            state, again, [backend.to_message(t) for t in again]
        )
    assert await backend.get(again[0].id) is None
    assert [r.task.id for r in (await take_all(backend)).values()] != [again[0].id]


async def test_records_are_rewritten_in_place_keeping_their_payload(
    backend: RedisBackend,
) -> None:
    """Released and cancelled records change only their own fields: a payload that looks
    like them, empty lists and big numbers stay byte for byte; a member a reserve marked
    running is cancelled as it reads (one more attempt, its start and lease)."""
    payload = {"args": [], "kwargs": {"status": "waiting", "error": None, "n": 2**60 + 1}}
    graph = Graph(
        nodes=[
            Node(key=0, task=NAME),
            Node(key=1, task=NAME, parents=[0]),
            Node(key=2, task=NAME),
            Node(key=3, task=NAME, parents=[2]),
        ],
        result=[1, 3],
    )
    store = store_of(backend)
    workflow_id, tasks = await submit(backend, graph, payload=payload)
    taken = await take_all(backend)
    await store.complete_member(taken[tasks[0].id], outcome(taken[tasks[0].id]))
    released = await backend.get(tasks[1].id)
    assert released is not None
    assert released.status is TaskStatus.PENDING
    assert released.payload == payload
    assert await store.cancel_workflow(workflow_id) is True
    running = taken[tasks[2].id]
    cancelled = await backend.get(tasks[2].id)
    assert cancelled is not None
    assert cancelled.status is TaskStatus.CANCELLED
    assert cancelled.error == "cancelled: its workflow ended"
    assert cancelled.payload == payload
    assert cancelled.attempts == 1
    assert cancelled.lease_token == running.token
    assert cancelled.started_at is not None
    assert cancelled.finished_at is not None
    assert cancelled.finished_at >= cancelled.started_at
    waiting = await backend.get(tasks[3].id)
    assert waiting is not None
    assert (waiting.status, waiting.attempts, waiting.payload) == (
        TaskStatus.CANCELLED,
        0,
        payload,
    )
    # the running member's outcome arrives late: refused, and nothing moves
    with pytest.raises(InvalidTransitionError):  # as on memory: its lease kept, final
        await store.complete_member(running, outcome(running))


async def test_the_workflow_keys_expire_with_its_longest_lived_member(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    store = store_of(backend)
    workflow_id, tasks = await submit(backend, chord_graph(1), ttl=30.0)
    key = backend.key("wf", workflow_id)
    assert await raw.pttl(key) == -1  # running: no expiry
    assert await raw.exists(key + ":parked") == 1
    (reservation,) = (await take_all(backend)).values()
    await store.complete_member(reservation, outcome(reservation))
    (callback,) = (await take_all(backend)).values()
    await store.complete_member(callback, outcome(callback))
    assert 29_000 < await raw.pttl(key) <= 30_000
    assert 29_000 < await raw.pttl(backend.key("t", tasks[0].id)) <= 30_000
    untimed, _ = await submit(backend, chord_graph(1), ttl=None)
    assert await store.cancel_workflow(untimed) is True
    assert await raw.pttl(backend.key("wf", untimed)) == -1


# -- a dead member requeued --------------------------------------------------------------


async def dead_letter(backend: RedisBackend, reservation: Reservation) -> None:
    """What a worker does with a member whose retries ran out."""
    task = reservation.task.started(reservation.token, datetime.now(UTC))
    await backend.save(task)
    task.status, task.error = TaskStatus.DEAD, "ValueError: no"
    task.finished_at = datetime.now(UTC)
    await store_of(backend).save_member(task)
    await backend.dead_letter(reservation, "retries exhausted", task)


async def fail_and_end(
    backend: RedisBackend, graph: Graph, ttl: float = 30.0
) -> tuple[str, list[Task]]:
    """Node 0 dead-lettered (failing the workflow), node 1 succeeded: the workflow ended."""
    workflow_id, tasks = await submit(backend, graph, ttl=ttl)
    taken = await take_all(backend)
    await dead_letter(backend, taken[tasks[0].id])
    await store_of(backend).complete_member(taken[tasks[1].id], outcome(taken[tasks[1].id]))
    state = await store_of(backend).get_workflow(workflow_id)
    assert state is not None
    assert (state.status, state.left) == (WorkflowStatus.FAILED, 0)
    assert state.finished_at is not None
    return workflow_id, tasks


async def test_a_failed_workflow_keeps_what_it_dropped_parked_until_its_keys_expire(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    """0 and 1 -> 2: 0 fails it, so 2 is dropped (marked waiting, record cancelled) with its
    message kept; a requeue of 0 restores 2 (record waiting again, as it was) and PERSISTs
    every key the end gave a TTL; 0's success then releases 2 from what was kept."""
    workflow_id, tasks = await fail_and_end(backend, chord_graph(2))
    key = backend.key("wf", workflow_id)
    assert await raw.hget(key, "d:2") == b"waiting"
    assert await raw.hexists(key + ":parked", "b:2")
    for expiring in (key, key + ":parked", backend.key("t", tasks[1].id)):
        assert 29_000 < await raw.pttl(expiring) <= 30_000, expiring
    before = await backend.get(tasks[2].id)
    assert before is not None
    assert (before.status, before.error) == (TaskStatus.CANCELLED, "cancelled: its workflow ended")

    assert await requeue_dead(Backends.pair(backend, backend), Q, [tasks[0].id]) == [tasks[0].id]
    for kept in (key, key + ":parked", backend.key("t", tasks[1].id)):
        assert await raw.pttl(kept) == -1, kept
    assert await raw.hget(key, "finished") is None
    restored = await backend.get(tasks[2].id)
    assert restored is not None
    assert (restored.status, restored.error, restored.finished_at) == (
        TaskStatus.WAITING,
        None,
        None,
    )
    assert restored.payload == tasks[2].payload
    (again,) = (await take_all(backend)).values()
    assert again.task.id == tasks[0].id
    await store_of(backend).complete_member(again, outcome(again))
    (callback,) = (await take_all(backend)).values()
    assert callback.task.id == tasks[2].id
    await store_of(backend).complete_member(callback, outcome(callback))
    state = await store_of(backend).get_workflow(workflow_id)
    assert state is not None
    assert state.status is WorkflowStatus.SUCCEEDED
    assert 29_000 < await raw.pttl(key) <= 30_000
    assert await raw.exists(key + ":parked") == 0


async def test_a_reopen_releases_a_dropped_member_whose_parents_are_all_done(
    backend: RedisBackend,
) -> None:
    """0, and 1 -> 2 (the result 0 and 2): 0 fails it, 1 still counts 2's parents down, so
    the reopen releases 2 at once: its cancelled record pending, its parked message
    pushed (a record left cancelled would be acked unrun, and the workflow never end)."""
    graph = Graph(
        nodes=[Node(key=0, task=NAME), Node(key=1, task=NAME), Node(key=2, task=NAME, parents=[1])],
        result=[0, 2],
    )
    workflow_id, tasks = await fail_and_end(backend, graph)
    record = await backend.get(tasks[0].id)  # as requeue_dead does it, step by step
    assert record is not None
    record.status, record.lease_token = TaskStatus.PENDING, None
    link = backend.link()
    await link.load(scripts()["wf_reopen"])  # cached, as on every call but a server's first
    trips, commands = link.round_trips, link.commands
    await store_of(backend).reopen_member(record)
    assert (link.round_trips - trips, link.commands - commands) == (1, 1)
    assert await backend.requeue_dead(Q, [tasks[0].id]) == [tasks[0].id]
    released = await backend.get(tasks[2].id)
    assert released is not None
    assert (released.status, released.finished_at) == (TaskStatus.PENDING, None)
    taken = await take_all(backend)
    assert set(taken) == {tasks[0].id, tasks[2].id}
    for reservation in taken.values():
        assert reservation.started  # the reserve marked each running: neither is final
        await store_of(backend).complete_member(reservation, outcome(reservation))
    state = await store_of(backend).get_workflow(workflow_id)
    assert state is not None
    assert (state.status, state.left) == (WorkflowStatus.SUCCEEDED, 0)


async def test_a_requeue_into_an_unreadable_workflow_stores_the_record_alone(
    backend: RedisBackend, raw: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    workflow_id, tasks = await fail_and_end(backend, chord_graph(2))
    key = backend.key("wf", workflow_id)
    await raw.hset(key, "n", "many")
    before = await raw.hgetall(key)
    with caplog.at_level(logging.WARNING, "bgcoor.redis"):
        await requeue_dead(Backends.pair(backend, backend), Q, [tasks[0].id])
    assert f"{key} has left" in caplog.text
    assert await raw.hgetall(key) == before
    assert (await backend.get(tasks[0].id)).status is TaskStatus.PENDING  # type: ignore[union-attr]


def test_the_failures_a_reopen_counts_are_the_cores() -> None:
    assert WORKFLOW_FAILURES == _FAILURES


# -- damaged workflow hashes ------------------------------------------------------------


async def test_an_unreadable_workflow_costs_no_outcome_and_is_left_alone(
    backend: RedisBackend, raw: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The safest reading of a hash written by something else: the member's outcome is
    stored and its message acked (so it is not redelivered forever), the workflow is not
    stepped (nothing half done), and a warning names it; reading or cancelling it raises
    CorruptRecordError."""
    store = store_of(backend)
    workflow_id, tasks = await submit(backend, chord_graph(2))
    key = backend.key("wf", workflow_id)
    taken = await take_all(backend)
    await raw.hset(key, "r:2", "two")  # the callback's count, unreadable
    with caplog.at_level(logging.WARNING, "bgcoor.redis"):
        await store.complete_member(taken[tasks[0].id], outcome(taken[tasks[0].id]))
    assert "not stepped" in caplog.text
    assert f"{key} has r:2" in caplog.text
    record = await backend.get(tasks[0].id)
    assert record is not None
    assert record.status is TaskStatus.SUCCEEDED
    assert await raw.exists(backend.key("m", tasks[0].id)) == 0  # acked
    assert await raw.hget(key, "d:0") is None  # not counted: nothing of it changed
    assert await raw.hget(key, "left") == b"3"

    await raw.delete(key)
    await raw.set(key, "not a hash")
    caplog.clear()
    with caplog.at_level(logging.WARNING, "bgcoor.redis"):
        await store.complete_member(taken[tasks[1].id], outcome(taken[tasks[1].id]))
    assert "is not a hash" in caplog.text
    assert (await backend.get(tasks[1].id)).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]
    with pytest.raises(CorruptRecordError, match="is not a hash"):
        await store.get_workflow(workflow_id)
    with pytest.raises(CorruptRecordError, match="is not a hash"):
        await store.cancel_workflow(workflow_id)
    assert await take_all(backend) == {}


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("status", "sideways", "has status"),
        ("left", "-1", "has left"),
        ("c:0", "a,b", "has no readable node 0"),
    ],
)
async def test_unreadable_fields_leave_the_workflow_as_it_was(
    backend: RedisBackend,
    raw: aredis.Redis,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: str,
    why: str,
) -> None:
    store = store_of(backend)
    workflow_id, tasks = await submit(backend, chord_graph(1))
    key = backend.key("wf", workflow_id)
    await raw.hset(key, field, value)
    before = await raw.hgetall(key)
    (reservation,) = (await take_all(backend)).values()
    with caplog.at_level(logging.WARNING, "bgcoor.redis"):
        await store.complete_member(reservation, outcome(reservation))
    assert f"{key} {why}" in caplog.text
    assert await raw.hgetall(key) == before
    assert (await backend.get(tasks[0].id)).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]
    assert await take_all(backend) == {}


async def test_a_member_of_a_workflow_gone_is_stored_alone(
    backend: RedisBackend, raw: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_of(backend)
    workflow_id, tasks = await submit(backend, chord_graph(1))
    await raw.delete(backend.key("wf", workflow_id))  # e.g. expired after it ended
    (reservation,) = (await take_all(backend)).values()
    with caplog.at_level(logging.WARNING, "bgcoor.redis"):
        await store.complete_member(reservation, outcome(reservation))
    assert caplog.text == ""
    assert (await backend.get(tasks[0].id)).status is TaskStatus.SUCCEEDED  # type: ignore[union-attr]
    assert await store.get_workflow(workflow_id) is None
    assert await store.cancel_workflow(workflow_id) is False


# -- end to end ---------------------------------------------------------------------------


def test_other_scripts_carry_no_workflow_function() -> None:
    """Workflows leave every other script (and so its SHA) as it was: ``workflow.lua``'s
    functions go only into the ``wf_*`` scripts."""
    for name, script in scripts().items():
        has = b"local function wf_" in script.source
        assert has is (name in WORKFLOW_NAMES), name
