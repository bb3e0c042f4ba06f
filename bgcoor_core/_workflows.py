"""Running workflows: what a backend keeps for one, and the rule it applies, atomically,
when a member reaches a final status.

A workflow is submitted in one step (:meth:`WorkflowStore.submit_workflow`): every
member's record, the messages of its roots, and the messages of the others *parked*
with the workflow's state (records ``waiting``). When a member's record becomes final,
the same step that stores it (:meth:`~WorkflowStore.save_member`,
:meth:`~WorkflowStore.complete_member`) applies :func:`apply_outcome`: counts the member
done once, releases dependents whose parents are all done (their parked message pushed,
their record ``pending``), or, when the member failed for good under ``on_failure="fail"``,
fails the workflow and cancels the members still waiting, and releases the member's
``on_error``. A record becomes final once (a final status never changes), so a redelivered
member cannot count twice, and no process ever polls for a workflow's progress.

Member records are kept without expiry while the workflow runs (a dependent reads its
parents' results when it starts); when it ends, each gets its own result TTL.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from ._broker import Message, Reservation
from ._composition import Graph, OnFailure, _leaves
from ._task import Task, TaskStatus

#: Headers of a member task: its workflow, its node, where its first arguments come from
#: (a JSON shape of parents' task ids) and, for an ``on_error``, the failed member's id.
WORKFLOW_HEADER = "bgcoor-workflow"
NODE_HEADER = "bgcoor-node"
INPUTS_HEADER = "bgcoor-inputs"
ERROR_OF_HEADER = "bgcoor-error-of"


class WorkflowStatus(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self is not WorkflowStatus.RUNNING


class WorkflowState(BaseModel):
    """A workflow as its backend keeps it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    graph: Graph
    status: WorkflowStatus = WorkflowStatus.RUNNING
    #: Member task ids, by node key.
    tasks: list[str]
    #: Parents not yet done, by node key.
    remaining: list[int]
    #: Final status of each member once it is done (or cancelled unstarted), by node key.
    done: list[TaskStatus | None]
    #: Members not done yet (``None`` in ``done``): the workflow ends when it reaches 0.
    left: int = -1
    #: Result TTL of each member's record, applied when the workflow ends.
    ttls: list[float | None]
    #: What failed it: ``"node 3 (jobs.parse) failed: ValueError: ..."``.
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


@dataclass(slots=True)
class Effects:
    """What one outcome asks the store to do, in the same step."""

    #: Nodes to release: record ``waiting`` -> ``pending``, parked message pushed.
    release: list[int] = field(default_factory=list)
    #: Nodes to cancel: a record not final yet becomes ``cancelled``, a parked message is
    #: dropped (a queued one is acked unrun by the worker that finds the record final).
    cancel: list[int] = field(default_factory=list)
    #: The workflow just ended: every member record gets its TTL (``state.ttls``).
    ended: bool = False
    #: The outcome was already counted (a redelivery): nothing else to do.
    duplicate: bool = False


def apply_outcome(state: WorkflowState, key: int, status: TaskStatus, error: str | None) -> Effects:
    """Count node ``key`` done with final ``status``; update ``state`` in place and say
    what else the step must do. Shared by every store that can run Python in its step."""
    effects = Effects()
    if state.done[key] is not None:
        effects.duplicate = True
        return effects
    _done(state, key, status)
    node = state.graph.nodes[key]
    ok = status is TaskStatus.SUCCEEDED
    running = state.status is WorkflowStatus.RUNNING
    if node.on_error is not None and state.done[node.on_error] is None:
        if ok or not running:
            _drop(state, node.on_error, effects)  # not needed: it never runs
        else:
            effects.release.append(node.on_error)
    if not running:
        pass  # failed or cancelled already: nothing more starts
    elif not ok and not node.errback and state.graph.on_failure is OnFailure.FAIL:
        _fail(
            state, f"node {key} ({node.task}) {status}" + (f": {error}" if error else ""), effects
        )
    else:  # done, or failed under on_failure="continue" (dependents get a marker)
        for child in state.graph.children()[key]:
            state.remaining[child] -= 1
            if state.remaining[child] == 0 and state.done[child] is None:
                effects.release.append(child)
    if _left(state) == 0:
        _end(state, effects)
    return effects


def _fail(state: WorkflowState, why: str, effects: Effects) -> None:
    """The workflow cannot succeed: failed, and nothing waiting starts."""
    state.status = WorkflowStatus.FAILED
    state.error = why
    for other in state.graph.nodes:
        if other.key not in effects.release and _waiting(state, other.key):
            _drop(state, other.key, effects)


def _end(state: WorkflowState, effects: Effects) -> None:
    effects.ended = True
    state.finished_at = datetime.now(UTC)
    if state.status is WorkflowStatus.RUNNING:
        # Under "fail" any failure ended it already; under "continue" it succeeded when
        # what makes its result did.
        results = _leaves(state.graph.result)
        failed = [k for k in results if state.done[k] is not TaskStatus.SUCCEEDED]
        state.status = WorkflowStatus.FAILED if failed else WorkflowStatus.SUCCEEDED
        if failed:
            node = state.graph.nodes[failed[0]]
            state.error = f"node {node.key} ({node.task}) {state.done[node.key]}"


def cancel_all(state: WorkflowState) -> Effects:
    """``cancel_workflow``: the workflow is ``cancelled`` and so is every member not done
    (its record ``cancelled``: a queued one never starts, a running one's outcome is
    dropped, a parked one's message is dropped)."""
    effects = Effects()
    if state.status.is_final:
        return effects
    state.status = WorkflowStatus.CANCELLED
    for node in state.graph.nodes:
        if state.done[node.key] is None:
            _drop(state, node.key, effects)
    effects.ended = True
    state.finished_at = datetime.now(UTC)
    return effects


def _waiting(state: WorkflowState, key: int) -> bool:
    """Not released yet (its record ``waiting``, its message parked)."""
    node = state.graph.nodes[key]
    return state.done[key] is None and (node.errback or state.remaining[key] > 0)


def _drop(state: WorkflowState, key: int, effects: Effects) -> None:
    _done(state, key, TaskStatus.CANCELLED)
    effects.cancel.append(key)


def _left(state: WorkflowState) -> int:
    if state.left < 0:  # a state written before ``left`` was kept: count once
        state.left = sum(1 for done in state.done if done is None)
    return state.left


def _done(state: WorkflowState, key: int, status: TaskStatus) -> None:
    _left(state)
    state.done[key] = status
    state.left -= 1


@runtime_checkable
class WorkflowStore(Protocol):
    """Where workflows run: a broker that enqueues atomically into its storage provides
    one through :meth:`Broker.workflow_store`."""

    async def submit_workflow(
        self, state: WorkflowState, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> None:
        """Store ``state``, every member's record (``pending`` roots, ``waiting`` others)
        and push the roots' messages, parking the others' with the state: all or none."""
        ...

    async def save_member(self, task: Task) -> None:
        """:meth:`Storage.save` of a member's final record (same checks), and
        :func:`apply_outcome` with its effects, in one step."""
        ...

    async def complete_member(self, reservation: Reservation, task: Task) -> None:
        """:meth:`AtomicCompletion.complete` of a member (outcome stored, message acked),
        and :func:`apply_outcome` with its effects, in one step."""
        ...

    async def cancel_workflow(self, workflow_id: str) -> bool:
        """:func:`cancel_all` in one step; False when there is no such workflow or it
        had ended."""
        ...

    async def get_workflow(self, workflow_id: str) -> WorkflowState | None: ...


def member_of(task: Task) -> tuple[str, int] | None:
    """The workflow and node of a member task, else ``None`` (one dict lookup)."""
    workflow = task.headers.get(WORKFLOW_HEADER)
    if workflow is None:
        return None
    return workflow, int(task.headers[NODE_HEADER])


def new_state(
    workflow_id: str,
    graph: Graph,
    tasks: Sequence[Task],
    ttls: Sequence[float | None],
    now: datetime,
) -> WorkflowState:
    return WorkflowState(
        id=workflow_id,
        graph=graph,
        tasks=[t.id for t in tasks],
        remaining=[len(n.parents) for n in graph.nodes],
        done=[None] * len(graph.nodes),
        left=len(graph.nodes),
        ttls=list(ttls),
        created_at=now,
    )
