"""Submitting a workflow's graph, and the handle on a running workflow."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._building import build, check_complete
from ._composition import Graph, Shape, _leaves
from ._errors import (
    CapabilityError,
    InvalidWorkflowError,
    PayloadError,
    ResultTimeoutError,
    TaskCancelledError,
    UnknownTaskError,
    WorkflowFailedError,
)
from ._gates import GATE_HEADER
from ._ids import new_task_id
from ._options import check as check_options
from ._task import Task, TaskStatus
from ._workflows import (
    ERROR_OF_HEADER,
    INPUTS_HEADER,
    NODE_HEADER,
    WORKFLOW_HEADER,
    WorkflowState,
    WorkflowStatus,
    WorkflowStore,
    new_state,
)

if TYPE_CHECKING:
    from ._manager import TaskManager


def store_of(manager: TaskManager) -> WorkflowStore:
    store = manager.backends.workflows
    if store is None:
        backends = manager.backends
        raise CapabilityError(
            f"{type(backends.broker).__name__} with {type(backends.storage).__name__} cannot "
            "run workflows (a member's outcome and its dependents' release must be one "
            "atomic step; the memory backend can)"
        )
    return store


def build_members(manager: TaskManager, graph: Graph, workflow_id: str) -> list[Task]:
    """One task per node, checked like any enqueue: registered task, complete arguments
    (with the parents' results it will get), valid options."""
    ids = [new_task_id() for _ in graph.nodes]
    failed_by = {node.on_error: node.key for node in graph.nodes if node.on_error is not None}
    tasks = []
    for node in graph.nodes:
        where = f"workflow node {node.key} ({node.task}): "
        try:
            entry = manager.registry.get(node.task)
        except UnknownTaskError as exc:
            raise InvalidWorkflowError(f"{where}{exc}") from None
        leading = 1 if node.errback else len(node.inputs)
        try:
            check_complete(entry, node.payload, leading=leading)
        except PayloadError as exc:
            raise InvalidWorkflowError(f"{where}{exc}") from None
        options = check_options("call", node.options, where=where) if node.options else {}
        if "unique_key" in options:  # a member runs when its workflow says, never instead
            raise InvalidWorkflowError(f"{where}unique_key cannot be used on a workflow member")
        task = build(entry, node.payload, options, manager.settings)
        if GATE_HEADER in task.headers:  # a member's message waits in the workflow's store
            raise InvalidWorkflowError(
                f"{where}a task with a rate_limit or concurrency_limit cannot be a workflow "
                "member yet"
            )
        task.id = ids[node.key]
        headers = {WORKFLOW_HEADER: workflow_id, NODE_HEADER: str(node.key)}
        if node.inputs:
            headers[INPUTS_HEADER] = json.dumps(_as_ids(node.inputs, ids))
        if node.errback:
            headers[ERROR_OF_HEADER] = ids[failed_by[node.key]]
        task.headers = {**task.headers, **headers}
        if node.parents or node.errback:
            task.status = TaskStatus.WAITING
        tasks.append(task)
    return tasks


def _as_ids(shapes: list[Shape], ids: list[str]) -> list[Any]:
    def one(shape: Shape) -> Any:
        return ids[shape] if isinstance(shape, int) else [one(part) for part in shape]

    return [one(shape) for shape in shapes]


async def submit(manager: TaskManager, graph: Graph) -> WorkflowHandle:
    store = store_of(manager)
    workflow_id = new_task_id()
    tasks = build_members(manager, graph, workflow_id)
    for task in tasks:
        manager.host.before_enqueue(task)
    messages = [manager.broker.to_message(task) for task in tasks]
    ttls = [manager.settings.result_ttl if t.result_ttl is None else t.result_ttl for t in tasks]
    state = new_state(workflow_id, graph, tasks, ttls, datetime.now(UTC))
    await store.submit_workflow(state, tasks, messages)
    for task in tasks:
        manager.host.task_enqueued(task)
    return WorkflowHandle(manager, workflow_id)


class WorkflowHandle:
    """A submitted workflow: ``await h.result(timeout=30)``, ``h.status()``, ``h.cancel()``."""

    def __init__(self, manager: TaskManager, workflow_id: str) -> None:
        self.manager = manager
        self.id = workflow_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.id!r})"

    async def state(self) -> WorkflowState:
        state = await store_of(self.manager).get_workflow(self.id)
        if state is None:
            raise LookupError(f"no workflow {self.id!r}")
        return state

    async def status(self) -> str:
        """``pending`` (nothing started yet), ``running``, ``succeeded``, ``failed`` or
        ``cancelled``."""
        state = await self.state()
        if state.status is not WorkflowStatus.RUNNING:
            return state.status.value
        if any(done is not None for done in state.done):
            return WorkflowStatus.RUNNING.value
        roots = [state.tasks[key] for key in state.graph.roots()]
        records = [await self.manager.storage.get(task_id) for task_id in roots]
        started = any(r is not None and r.status is not TaskStatus.PENDING for r in records)
        return WorkflowStatus.RUNNING.value if started else "pending"

    async def result(self, timeout: float | None = None) -> Any:
        """The workflow's result (its last task's, a group's list, ...) once it ended;
        :class:`TaskFailedError` naming the member that failed it, or
        :class:`TaskCancelledError`."""
        give_up = None if timeout is None else time.monotonic() + timeout
        state = await self.state()
        sinks = [state.tasks[key] for key in _leaves(state.graph.result)]
        await self._wait(sinks, give_up)  # each settles (or is cancelled) by the end
        state = await self.state()
        if not state.status.is_final:  # other branches still run: wait for them too
            await self._wait(
                [t for t, done in zip(state.tasks, state.done, strict=True) if done is None],
                give_up,
            )
            state = await self.state()
        if not state.status.is_final:  # every member is final, so the step that made the
            raise ResultTimeoutError(f"workflow {self.id} did not end")  # last one ended it
        if state.status is WorkflowStatus.CANCELLED:
            raise TaskCancelledError(f"workflow {self.id} was cancelled")
        if state.status is WorkflowStatus.FAILED:
            raise WorkflowFailedError(self.id, state.error)
        records = {}
        for task_id in sinks:
            record = await self.manager.storage.get(task_id)
            assert record is not None
            records[task_id] = self.manager.broker.codec.open_result(record.result)
        return _assemble(state.graph.result, state.tasks, records)

    async def _wait(self, task_ids: list[str], give_up: float | None) -> None:
        for task_id in task_ids:
            left = None if give_up is None else max(give_up - time.monotonic(), 0.0)
            try:
                await self.manager.storage.wait(task_id, timeout=left)
            except ResultTimeoutError:
                raise ResultTimeoutError(f"workflow {self.id} did not end in time") from None

    async def cancel(self) -> bool:
        """Cancel it: members not started never start, running ones are interrupted in
        this process's pools (their outcomes dropped elsewhere). False if it had ended."""
        state = await self.state()
        if state.status.is_final:
            return False
        if not await store_of(self.manager).cancel_workflow(self.id):
            return False
        for task_id in state.tasks:
            self.manager._stop_in_pools(task_id)
        return True


def _assemble(shape: Shape, tasks: list[str], results: dict[str, Any]) -> Any:
    if isinstance(shape, int):
        return results[tasks[shape]]
    return [_assemble(part, tasks, results) for part in shape]
