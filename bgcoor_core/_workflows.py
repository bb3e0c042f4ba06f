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
from typing import Protocol, TypeVar, runtime_checkable

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
    #: Parents not yet done (succeeded, or failed under ``continue``), by node key.
    remaining: list[int]
    #: Final status of each member once it is done, by node key; ``waiting`` for a member
    #: its workflow's failure dropped before it was released (its record ``cancelled``,
    #: its message kept parked: a requeue from the dead letters may restore it).
    done: list[TaskStatus | None]
    #: Members not done yet (``None`` in ``done``): the workflow ends when it reaches 0.
    left: int
    #: Result TTL of each member's record, applied when the workflow ends.
    ttls: list[float | None]
    #: What failed it: ``"node 3 (jobs.parse) failed: ValueError: ..."``.
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


T = TypeVar("T")


class Cells(Protocol[T]):
    """Per-node values: a list, or a store's view that reads nodes' rows as asked."""

    def __getitem__(self, key: int, /) -> T: ...

    def __setitem__(self, key: int, value: T, /) -> None: ...


class Progress(Protocol):
    """What the rules below read and change: a :class:`WorkflowState`, or a store's view
    of one that loads only the nodes a step touches (so a member's step costs what its
    node and its dependents cost, not what the whole workflow does)."""

    @property
    def graph(self) -> Graph: ...

    status: WorkflowStatus
    error: str | None
    left: int
    finished_at: datetime | None

    @property
    def remaining(self) -> Cells[int]: ...

    @property
    def done(self) -> Cells[TaskStatus | None]: ...


@dataclass(slots=True)
class Effects:
    """What one outcome asks the store to do, in the same step."""

    #: Nodes to release: record ``waiting`` -> ``pending``, parked message pushed.
    release: list[int] = field(default_factory=list)
    #: Nodes to cancel: a record not final yet becomes ``cancelled``. A parked message
    #: is dropped if the workflow was cancelled and kept otherwise (``restore`` may need
    #: it); a queued one is acked unrun by the worker that finds the record final.
    cancel: list[int] = field(default_factory=list)
    #: Nodes back to waiting (records ``cancelled`` -> ``waiting``, parked messages
    #: kept): a reopened workflow's members its failure had dropped.
    restore: list[int] = field(default_factory=list)
    #: The workflow just ended: every member record gets its TTL (``state.ttls``), the
    #: workflow's own record the longest of them (none if any is ``None``).
    ended: bool = False
    #: The workflow had ended and runs again: member records (and its own) lose their TTL.
    reopened: bool = False
    #: The outcome was already counted (a redelivery): nothing else to do.
    duplicate: bool = False


def apply_outcome(state: Progress, key: int, status: TaskStatus, error: str | None) -> Effects:
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
    fails = not ok and not node.errback and state.graph.on_failure is OnFailure.FAIL
    if node.on_error is not None and state.done[node.on_error] is None:
        if ok or not running:
            _drop(state, node.on_error, effects)  # not needed: it never runs
        else:
            effects.release.append(node.on_error)
    if running and fails:
        _fail(
            state, f"node {key} ({node.task}) {status}" + (f": {error}" if error else ""), effects
        )
    elif not fails:  # done, or failed under on_failure="continue" (dependents get a marker)
        # counted even once the workflow failed: a reopened workflow releases from here
        for child in state.graph.children()[key]:
            state.remaining[child] -= 1
            if running and state.remaining[child] == 0 and state.done[child] is None:
                effects.release.append(child)
    if state.left == 0:
        _end(state, effects)
    return effects


def _fail(state: Progress, why: str, effects: Effects) -> None:
    """The workflow cannot succeed: failed, and nothing waiting starts."""
    state.status = WorkflowStatus.FAILED
    state.error = why
    for other in state.graph.nodes:
        if other.key not in effects.release and _waiting(state, other.key):
            _drop(state, other.key, effects, TaskStatus.WAITING)


def _end(state: Progress, effects: Effects) -> None:
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


def cancel_all(state: Progress) -> Effects:
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


#: A member's final statuses that count as a failure of its workflow.
_FAILURES = frozenset(
    {TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)


def reopen(state: Progress, key: int) -> Effects | None:
    """Node ``key``, dead-lettered, is requeued from the dead letters: under
    ``on_failure="fail"``, when its failure is the only one that failed the workflow,
    the workflow runs again: the node counts as not done, every member the failure
    dropped waits again (released at once if its parents are all done by now), and the
    workflow's TTLs are lifted if it had ended. ``None`` (nothing changes: the member
    runs on its own, its outcome not counted) otherwise: under ``continue``, whose
    dependents had its failure marker already, or when other failures remain, or when
    the workflow was cancelled or the node is not a failure."""
    node = state.graph.nodes[key]
    if (
        state.status is not WorkflowStatus.FAILED
        or state.graph.on_failure is not OnFailure.FAIL
        or node.errback
        or state.done[key] not in _FAILURES
    ):
        return None
    nodes = state.graph.nodes
    others = [
        n.key for n in nodes if n.key != key and not n.errback and state.done[n.key] in _FAILURES
    ]
    if others:
        return None
    effects = Effects(reopened=state.left == 0)
    state.status, state.error, state.finished_at = WorkflowStatus.RUNNING, None, None
    state.done[key] = None
    state.left += 1
    for other in nodes:
        if state.done[other.key] is TaskStatus.WAITING:
            state.done[other.key] = None
            state.left += 1
            if not other.errback and state.remaining[other.key] == 0:
                effects.release.append(other.key)
            else:
                effects.restore.append(other.key)
    return effects


def _waiting(state: Progress, key: int) -> bool:
    """Not released yet (its record ``waiting``, its message parked)."""
    node = state.graph.nodes[key]
    return state.done[key] is None and (node.errback or state.remaining[key] > 0)


def _drop(
    state: Progress, key: int, effects: Effects, marker: TaskStatus = TaskStatus.CANCELLED
) -> None:
    _done(state, key, marker)
    effects.cancel.append(key)


def _done(state: Progress, key: int, status: TaskStatus) -> None:
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

    async def reopen_member(self, task: Task) -> None:
        """A dead member requeued from the dead letters: store its record ``task`` (status
        ``pending``, no lease, as the requeue writes it) and apply :func:`reopen` with its
        effects, in one step; the caller then moves its letter back to its queue."""
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


def expiry(state: WorkflowState) -> float | None:
    """Seconds an ended workflow's own record is kept: its longest member TTL, or
    ``None`` (kept) if a member's record is kept."""
    if any(ttl is None for ttl in state.ttls):
        return None
    return max((ttl for ttl in state.ttls if ttl is not None), default=0.0)


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
