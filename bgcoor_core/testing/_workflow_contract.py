"""Workflow store contract: submission is all or nothing, and each member's final outcome
releases, fails or cancels the rest in the step that stores it.

A backend passes it by providing ``broker`` and ``completion_storage`` fixtures (as
:class:`BrokerContract` does); the store under test is
``Backends.pair(broker, completion_storage).workflows``. A pair without one skips.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import pytest

from .._admin import requeue_dead
from .._broker import Broker, Reservation
from .._composition import Graph, Node, OnFailure
from .._errors import DuplicateTaskError, InvalidTransitionError, StaleLeaseError
from .._storage import Storage
from .._task import Task, TaskStatus
from .._wiring import Backends
from .._workflows import (
    ERROR_OF_HEADER,
    INPUTS_HEADER,
    NODE_HEADER,
    WORKFLOW_HEADER,
    WorkflowStatus,
    WorkflowStore,
    new_state,
)
from ._helpers import ASYNC, DEFAULT, LONG_LEASE, make_task

NAME = "contract.member"


def _graph(
    parents: list[list[int]], *, on_failure: str = "fail", errback_of: int | None = None
) -> Graph:
    """Nodes ``0..n-1`` with these parents (inputs = parents); an errback node appended
    for ``errback_of`` if given. The result is the last non-errback node."""
    nodes = [
        Node(key=k, task=NAME, parents=sorted(p), inputs=list(p)) for k, p in enumerate(parents)
    ]
    last = len(nodes) - 1
    if errback_of is not None:
        key = len(nodes)
        nodes[errback_of] = nodes[errback_of].model_copy(update={"on_error": key})
        nodes.append(Node(key=key, task=NAME, errback=True))
    return Graph(nodes=nodes, result=last, on_failure=OnFailure(on_failure))


class Submitted:
    """A workflow as submitted by the contract: its id, graph and member tasks."""

    def __init__(self, workflow_id: str, graph: Graph, tasks: list[Task]) -> None:
        self.id = workflow_id
        self.graph = graph
        self.tasks = tasks

    def task(self, key: int) -> Task:
        return self.tasks[key]


class WorkflowContract:
    """Mixin of the workflow store's tests; see the module docstring."""

    @pytest.fixture
    def workflows(self, broker: Broker, completion_storage: Storage | None) -> WorkflowStore:
        store = (
            None
            if completion_storage is None
            else Backends.pair(broker, completion_storage).workflows
        )
        if store is None:
            pytest.skip(f"{type(broker).__name__} has no workflow store")
        return store

    async def _submit(
        self, broker: Broker, store: WorkflowStore, graph: Graph, ttl: float | None = 60.0
    ) -> Submitted:
        workflow_id = f"wf-{uuid.uuid4().hex[:12]}"
        tasks = [make_task(NAME) for _ in graph.nodes]
        failed_by = {n.on_error: n.key for n in graph.nodes if n.on_error is not None}
        for node, task in zip(graph.nodes, tasks, strict=True):
            task.headers = {WORKFLOW_HEADER: workflow_id, NODE_HEADER: str(node.key)}
            if node.inputs:
                ids = [tasks[k].id for k in node.inputs if isinstance(k, int)]
                task.headers[INPUTS_HEADER] = json.dumps(ids)
            if node.errback:
                task.headers[ERROR_OF_HEADER] = tasks[failed_by[node.key]].id
            if node.parents or node.errback:
                task.status = TaskStatus.WAITING
        state = new_state(workflow_id, graph, tasks, [ttl] * len(tasks), datetime.now(UTC))
        await store.submit_workflow(state, tasks, [broker.to_message(t) for t in tasks])
        return Submitted(workflow_id, graph, tasks)

    async def _take_ready(self, broker: Broker) -> dict[str, Reservation]:
        taken: dict[str, Reservation] = {}
        while got := await broker.reserve([DEFAULT], lease=LONG_LEASE, limit=100, timeout=0):
            taken.update({r.task.id: r for r in got})
        return taken

    async def _settle(
        self,
        broker: Broker,
        store: WorkflowStore,
        storage: Storage,
        reservation: Reservation,
        status: TaskStatus = TaskStatus.SUCCEEDED,
        result: object = None,
    ) -> Task:
        """Run one member to ``status``: marked running under its lease, then settled
        through the store (``complete_member`` where the pair completes atomically)."""
        task = reservation.task.started(reservation.token, datetime.now(UTC))
        if not reservation.started:
            await storage.save(task)
        task.status, task.result = status, result
        task.error = None if status is TaskStatus.SUCCEEDED else "ValueError: contract"
        task.finished_at = datetime.now(UTC)
        if Backends.pair(broker, storage).atomic_completion is not None:
            await store.complete_member(reservation, task)
        else:
            await store.save_member(task)
            await broker.ack(reservation)
        return task

    async def _status(self, storage: Storage, task: Task) -> TaskStatus | None:
        record = await storage.get(task.id)
        return None if record is None else record.status

    # -- submitting ----------------------------------------------------------------------

    @ASYNC
    async def test_submission_stores_members_and_pushes_only_the_roots(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        graph = _graph([[], [], [0, 1]])
        wf = await self._submit(broker, workflows, graph)
        taken = await self._take_ready(broker)
        assert set(taken) == {wf.task(0).id, wf.task(1).id}
        assert await self._status(completion_storage, wf.task(2)) is TaskStatus.WAITING
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.RUNNING
        assert state.tasks == [t.id for t in wf.tasks]
        assert (state.remaining, state.done) == ([0, 0, 2], [None, None, None])
        assert state.graph == graph
        assert await workflows.get_workflow("wf-none") is None

    @ASYNC
    async def test_a_submission_that_fails_stores_nothing(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        taken = make_task(NAME)
        await completion_storage.save(taken)
        graph = _graph([[], [0]])
        state_tasks = [make_task(NAME), taken]
        workflow_id = f"wf-{uuid.uuid4().hex[:12]}"
        for node, task in zip(graph.nodes, state_tasks, strict=True):
            task.headers = {WORKFLOW_HEADER: workflow_id, NODE_HEADER: str(node.key)}
        state = new_state(workflow_id, graph, state_tasks, [None, None], datetime.now(UTC))
        messages = [broker.to_message(t) for t in state_tasks]
        with pytest.raises(DuplicateTaskError):
            await workflows.submit_workflow(state, state_tasks, messages)
        assert await workflows.get_workflow(workflow_id) is None
        assert await completion_storage.get(state_tasks[0].id) is None
        assert await self._take_ready(broker) == {}

    # -- fan-in --------------------------------------------------------------------------

    @ASYNC
    async def test_a_dependent_is_released_when_its_last_parent_is_done(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[], [], [], [0, 1, 2]]))
        taken = await self._take_ready(broker)
        for key in (0, 1):
            await self._settle(broker, workflows, completion_storage, taken[wf.task(key).id])
        assert await self._take_ready(broker) == {}  # one parent to go
        assert await self._status(completion_storage, wf.task(3)) is TaskStatus.WAITING
        await self._settle(broker, workflows, completion_storage, taken[wf.task(2).id])
        # before it is reserved: a reserve may mark it running in the same step
        assert await self._status(completion_storage, wf.task(3)) is TaskStatus.PENDING
        released = await self._take_ready(broker)
        assert list(released) == [wf.task(3).id]
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.remaining[3] == 0
        assert state.done[:3] == [TaskStatus.SUCCEEDED] * 3

    @ASYNC
    async def test_members_finishing_at_once_release_the_callback_once(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[]] * 10 + [list(range(10))]))
        taken = await self._take_ready(broker)
        await asyncio.gather(
            *(
                self._settle(broker, workflows, completion_storage, taken[wf.task(k).id])
                for k in range(10)
            )
        )
        assert list(await self._take_ready(broker)) == [wf.task(10).id]

    @ASYNC
    async def test_a_member_is_counted_once(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[], [], [0, 1]]))
        taken = await self._take_ready(broker)
        done = await self._settle(broker, workflows, completion_storage, taken[wf.task(0).id])
        with pytest.raises((InvalidTransitionError, StaleLeaseError)):
            await workflows.save_member(done)  # its final record, written again
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.remaining[2] == 1
        assert await self._take_ready(broker) == {}

    @ASYNC
    async def test_a_stale_lease_changes_nothing(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        if Backends.pair(broker, completion_storage).atomic_completion is None:
            pytest.skip("completes through save_member, then acks: no lease in the step")
        wf = await self._submit(broker, workflows, _graph([[], [0]]))
        (reservation,) = (await self._take_ready(broker)).values()
        task = reservation.task.started(reservation.token, datetime.now(UTC))
        if not reservation.started:
            await completion_storage.save(task)
        task.status = TaskStatus.SUCCEEDED
        stale = Reservation(reservation.task, "not-the-token")
        with pytest.raises(StaleLeaseError):
            await workflows.complete_member(stale, task)
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.done == [None, None]
        assert await self._take_ready(broker) == {}

    # -- failure -------------------------------------------------------------------------

    @ASYNC
    async def test_fail_fails_the_workflow_cancels_what_waits_and_releases_the_errback(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        # 0 -> 1, 2 -> 3; 0 has an errback (4)
        graph = _graph([[], [0], [], [2]], errback_of=0)
        wf = await self._submit(broker, workflows, graph)
        taken = await self._take_ready(broker)
        assert set(taken) == {wf.task(0).id, wf.task(2).id}  # the errback waits
        await self._settle(
            broker, workflows, completion_storage, taken[wf.task(0).id], TaskStatus.DEAD
        )
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.FAILED
        assert state.error is not None
        assert "node 0" in state.error
        assert await self._status(completion_storage, wf.task(1)) is TaskStatus.CANCELLED
        assert await self._status(completion_storage, wf.task(3)) is TaskStatus.CANCELLED
        assert list(await self._take_ready(broker)) == [wf.task(4).id]  # the errback, alone
        # the branch still running finishes, but releases nothing
        await self._settle(broker, workflows, completion_storage, taken[wf.task(2).id])
        assert await self._take_ready(broker) == {}

    @ASYNC
    async def test_continue_releases_dependents_of_a_failed_member(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[], [0]], on_failure="continue"))
        (reservation,) = (await self._take_ready(broker)).values()
        await self._settle(broker, workflows, completion_storage, reservation, TaskStatus.FAILED)
        assert list(await self._take_ready(broker)) == [wf.task(1).id]
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.RUNNING

    @ASYNC
    async def test_an_errback_is_dropped_when_its_member_succeeds(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[]], errback_of=0))
        (reservation,) = (await self._take_ready(broker)).values()
        await self._settle(broker, workflows, completion_storage, reservation)
        assert await self._take_ready(broker) == {}
        assert await self._status(completion_storage, wf.task(1)) is TaskStatus.CANCELLED
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.SUCCEEDED
        assert state.finished_at is not None or state.status.is_final

    # -- ending --------------------------------------------------------------------------

    @ASYNC
    async def test_member_records_expire_only_once_the_workflow_ended(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[], [0]]), ttl=0.3)
        (first,) = (await self._take_ready(broker)).values()
        await self._settle(broker, workflows, completion_storage, first, result=41)
        await asyncio.sleep(0.5)
        record = await completion_storage.get(wf.task(0).id)  # past its TTL: kept
        assert record is not None
        assert record.result == 41
        (second,) = (await self._take_ready(broker)).values()
        await self._settle(broker, workflows, completion_storage, second)
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.SUCCEEDED
        await asyncio.sleep(0.6)
        assert await completion_storage.get(wf.task(0).id) is None
        assert await completion_storage.get(wf.task(1).id) is None

    @ASYNC
    async def test_cancelling_cancels_every_member_not_done(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[], [], [0, 1]]))
        taken = await self._take_ready(broker)
        await self._settle(broker, workflows, completion_storage, taken[wf.task(0).id])
        assert await workflows.cancel_workflow(wf.id) is True
        assert await workflows.cancel_workflow(wf.id) is False
        assert await workflows.cancel_workflow("wf-none") is False
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.CANCELLED
        statuses = [await self._status(completion_storage, t) for t in wf.tasks]
        assert statuses == [TaskStatus.SUCCEEDED, TaskStatus.CANCELLED, TaskStatus.CANCELLED]
        assert await self._take_ready(broker) == {}

    # -- dead letters and expiry -----------------------------------------------------------

    async def _dead_letter(
        self, broker: Broker, store: WorkflowStore, storage: Storage, reservation: Reservation
    ) -> None:
        """What the worker does with a member whose retries ran out: its ``dead`` record
        through the store, then its message into the dead letters."""
        task = reservation.task.started(reservation.token, datetime.now(UTC))
        if not reservation.started:
            await storage.save(task)
        task.status, task.error = TaskStatus.DEAD, "ValueError: contract"
        task.finished_at = datetime.now(UTC)
        await store.save_member(task)
        await broker.dead_letter(reservation, "retries exhausted", task)

    @ASYNC
    async def test_a_dead_member_requeued_from_the_dead_letters_resumes_its_workflow(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        # 0 and 1 -> 2 (a chord); 0 has an errback (3)
        graph = _graph([[], [], [0, 1]], errback_of=0)
        wf = await self._submit(broker, workflows, graph, ttl=0.3)
        taken = await self._take_ready(broker)
        await self._dead_letter(broker, workflows, completion_storage, taken[wf.task(0).id])
        assert await self._status(completion_storage, wf.task(2)) is TaskStatus.CANCELLED
        # the other header member and the errback finish while the workflow is failed
        await self._settle(broker, workflows, completion_storage, taken[wf.task(1).id])
        (errback,) = (await self._take_ready(broker)).values()
        await self._settle(broker, workflows, completion_storage, errback)
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.FAILED
        assert state.finished_at is not None  # ended: its records' TTLs run

        pair = Backends.pair(broker, completion_storage)
        assert await requeue_dead(pair, DEFAULT, [wf.task(0).id]) == [wf.task(0).id]
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert (state.status, state.error, state.finished_at) == (
            WorkflowStatus.RUNNING,
            None,
            None,
        )
        assert state.done[:3] == [None, TaskStatus.SUCCEEDED, None]
        assert await self._status(completion_storage, wf.task(2)) is TaskStatus.WAITING
        await asyncio.sleep(0.5)  # past the TTL: the reopened workflow lifted it
        assert await self._status(completion_storage, wf.task(1)) is TaskStatus.SUCCEEDED
        (again,) = (await self._take_ready(broker)).values()
        assert again.task.id == wf.task(0).id
        await self._settle(broker, workflows, completion_storage, again)
        (callback,) = (await self._take_ready(broker)).values()  # released, exactly once
        assert callback.task.id == wf.task(2).id
        await self._settle(broker, workflows, completion_storage, callback)
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.SUCCEEDED
        assert await self._take_ready(broker) == {}  # the errback did not run again

    @ASYNC
    async def test_a_requeued_member_leaves_a_workflow_another_failure_failed(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[], [], [0, 1]]), ttl=0.3)
        taken = await self._take_ready(broker)
        for key in (0, 1):
            await self._dead_letter(broker, workflows, completion_storage, taken[wf.task(key).id])
        pair = Backends.pair(broker, completion_storage)
        assert await requeue_dead(pair, DEFAULT, [wf.task(0).id]) == [wf.task(0).id]
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.FAILED
        assert "node 0" in (state.error or "")
        (again,) = (await self._take_ready(broker)).values()  # it runs, on its own
        await self._settle(broker, workflows, completion_storage, again)
        assert await self._status(completion_storage, wf.task(0)) is TaskStatus.SUCCEEDED
        assert await self._take_ready(broker) == {}
        await asyncio.sleep(0.5)  # its record got its TTL again, as its workflow had ended
        assert await completion_storage.get(wf.task(0).id) is None

    @ASYNC
    async def test_an_ended_workflow_is_kept_for_its_members_longest_ttl(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        wf = await self._submit(broker, workflows, _graph([[]]), ttl=0.3)
        (only,) = (await self._take_ready(broker)).values()
        await asyncio.sleep(0.5)  # a running workflow has no TTL
        assert await workflows.get_workflow(wf.id) is not None
        await self._settle(broker, workflows, completion_storage, only)
        assert await workflows.get_workflow(wf.id) is not None
        await asyncio.sleep(0.6)
        assert await workflows.get_workflow(wf.id) is None

    @ASYNC
    async def test_a_reopen_releases_a_dropped_member_whose_parents_are_all_done(
        self, broker: Broker, completion_storage: Storage, workflows: WorkflowStore
    ) -> None:
        # 0 and 1 -> 2, 2 waits for 1 only: 0 dies, then 1 succeeds while it is failed
        wf = await self._submit(broker, workflows, _graph([[], [], [1], [0, 2]]))
        taken = await self._take_ready(broker)
        await self._dead_letter(broker, workflows, completion_storage, taken[wf.task(0).id])
        await self._settle(broker, workflows, completion_storage, taken[wf.task(1).id])
        assert await self._status(completion_storage, wf.task(2)) is TaskStatus.CANCELLED
        assert await self._take_ready(broker) == {}
        pair = Backends.pair(broker, completion_storage)
        assert await requeue_dead(pair, DEFAULT, [wf.task(0).id]) == [wf.task(0).id]
        record = await completion_storage.get(wf.task(2).id)
        assert record is not None
        assert (record.status, record.error, record.finished_at) == (
            TaskStatus.PENDING,
            None,
            None,
        )
        ready = await self._take_ready(broker)
        assert set(ready) == {wf.task(0).id, wf.task(2).id}
        for key in (0, 2):
            await self._settle(broker, workflows, completion_storage, ready[wf.task(key).id])
        (last,) = (await self._take_ready(broker)).values()
        assert last.task.id == wf.task(3).id
        await self._settle(broker, workflows, completion_storage, last)
        state = await workflows.get_workflow(wf.id)
        assert state is not None
        assert state.status is WorkflowStatus.SUCCEEDED
