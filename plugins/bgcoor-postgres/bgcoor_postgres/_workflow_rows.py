"""A workflow's rows as the fan-in rule sees them: the submitted state (parsed once per
process), and a :class:`kit.Progress` view over the node rows a step loaded.

The ``workflows`` row keeps the state as submitted (``state``: graph, member ids, TTLs;
never rewritten) beside the scalars steps change (status, members left, error, end time);
``workflow_nodes`` keeps one row per node (parents remaining, final status). A step locks
the workflow row and loads only the node rows the rule will touch: the member's node, its
children and its ``on_error`` (all of them when it may fail or end the workflow, or when
this process has not parsed the graph yet). :class:`Parsed` keeps parsed submitted states,
keyed by workflow id and the digest stored beside them at submission, so a workflow id
submitted again after its row expired is never mistaken for the old one.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from bgcoor_core import TaskStatus
from bgcoor_core.kit import CorruptRecordError, Graph, WorkflowState, WorkflowStatus, printable

T = TypeVar("T")

#: The fields of :class:`WorkflowState` that steps change: kept in columns and node rows,
#: left out of the submitted ``state`` JSON.
PROGRESS = frozenset({"status", "remaining", "done", "left", "error", "finished_at"})


#: What never changes after submission: a :class:`WorkflowState` whose progress fields
#: are placeholders (a row migrated from version 4 holds the progress of its time: ignored
#: too, its node rows and columns have it).
Submitted = WorkflowState
_PLACEHOLDERS: dict[str, Any] = {"remaining": [], "done": [], "left": 0}


def submitted_json(state: WorkflowState) -> tuple[str, str]:
    """The ``state`` column of a new workflow and its digest."""
    text = state.model_dump_json(exclude=set(PROGRESS))
    return text, hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Parsed:
    """Submitted states parsed by this process, most recently used last."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._states: OrderedDict[str, tuple[str, Submitted]] = OrderedDict()

    def peek(self, workflow_id: str) -> tuple[str, Submitted] | None:
        """The digest and state parsed last for this id (the lock checks the digest)."""
        found = self._states.get(workflow_id)
        if found is not None:
            self._states.move_to_end(workflow_id)
        return found

    def parse(self, workflow_id: str, digest: str | None, text: str) -> Submitted:
        """Parse a row's state (``CorruptRecordError`` naming the workflow) and keep it."""
        submitted = _submitted(workflow_id, text)
        if digest is not None:
            self._states[workflow_id] = (digest, submitted)
            self._states.move_to_end(workflow_id)
            if len(self._states) > self._size:
                self._states.popitem(last=False)
        return submitted


def corrupt(workflow_id: str, problem: str) -> CorruptRecordError:
    return CorruptRecordError(
        f"corrupt workflow {printable(workflow_id, 60)}: {printable(problem, 300)}"
    )


def _submitted(workflow_id: str, text: str) -> Submitted:
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        state = Submitted.model_validate({**data, **_PLACEHOLDERS})
    except ValueError as exc:  # pydantic's ValidationError and JSONDecodeError are ones
        problem = f"its state cannot be decoded: {_why(exc)}"
    else:
        problem = _misfit(state, workflow_id) or ""
        if not problem:
            return state
    raise corrupt(workflow_id, problem)


def _why(exc: ValueError) -> str:
    if not isinstance(exc, ValidationError):
        return str(exc)
    errors = exc.errors(include_url=False)[:3]
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def _misfit(state: Submitted, workflow_id: str) -> str | None:
    """Why a state that parsed cannot be stepped (it would fail mid-step), or ``None``."""
    if state.id != workflow_id:
        return f"it holds the state of workflow {printable(state.id, 60)!r}"
    n = len(state.graph.nodes)
    if len(state.tasks) != n or len(state.ttls) != n:
        return f"its lists of members and TTLs do not have one entry for each of {n} nodes"
    return state.graph.problem()


class Unloaded(Exception):
    """The rule asked for a node the step did not load: load them all and step again."""


class NodeCells(Generic[T]):
    """One per-node value of the loaded node rows (a :class:`kit.Cells`); what is set is
    remembered so only changed rows are written back."""

    def __init__(self, values: dict[int, T], changed: set[int]) -> None:
        self._values = values
        self._changed = changed

    def __getitem__(self, key: int, /) -> T:
        try:
            return self._values[key]
        except KeyError:
            raise Unloaded(key) from None

    def __setitem__(self, key: int, value: T, /) -> None:
        if key not in self._values:
            raise Unloaded(key)
        self._values[key] = value
        self._changed.add(key)

    def all(self, n: int) -> list[T]:
        return [self[key] for key in range(n)]


@dataclass(slots=True)
class Locked:
    """A workflow row as a step read it (under its lock) and the node rows it loaded."""

    status: str
    left: int
    error: str | None
    finished_at: datetime | None
    state: str | None  # the submitted state, sent only when the caller's digest is stale
    digest: str | None
    nodes: list[int]
    remaining: list[int]
    done: list[str | None]

    @classmethod
    def of(cls, row: Sequence[Any]) -> Locked:
        status, left, error, finished_at, state, digest, nodes, remaining, done = row
        nodes, remaining, done = nodes or [], remaining or [], done or []
        return cls(status, left, error, finished_at, state, digest, nodes, remaining, done)


@dataclass(slots=True)
class View:
    """A :class:`kit.Progress` over a locked row and the node rows it loaded."""

    submitted: Submitted
    status: WorkflowStatus
    error: str | None
    left: int
    finished_at: datetime | None
    remaining: NodeCells[int]
    done: NodeCells[TaskStatus | None]
    changed: set[int] = field(default_factory=set)
    #: Every node row was loaded (only then is :meth:`state` possible).
    complete: bool = False

    @property
    def graph(self) -> Graph:
        return self.submitted.graph

    @property
    def id(self) -> str:
        return self.submitted.id

    @classmethod
    def of(cls, workflow_id: str, submitted: Submitted, locked: Locked) -> View:
        """The view, or ``CorruptRecordError`` when the rows do not fit the graph."""
        n = len(submitted.graph.nodes)
        try:
            status = WorkflowStatus(locked.status)
            done = [None if d is None else TaskStatus(d) for d in locked.done]
        except ValueError as exc:
            raise corrupt(workflow_id, f"its progress names an unknown status: {exc}") from None
        keys = locked.nodes
        if any(not 0 <= key < n for key in keys) or len(set(keys)) != len(keys):
            raise corrupt(workflow_id, "its node rows name nodes its graph does not have")
        if locked.left is None or not 0 <= locked.left <= n:
            raise corrupt(workflow_id, f"it counts {locked.left} members left of {n}")
        changed: set[int] = set()
        view = cls(
            submitted,
            status,
            locked.error,
            locked.left,
            locked.finished_at,
            NodeCells(dict(zip(keys, locked.remaining, strict=True)), changed),
            NodeCells(dict(zip(keys, done, strict=True)), changed),
            changed,
            complete=len(keys) == n,
        )
        if view.complete and done.count(None) != view.left:
            raise corrupt(workflow_id, f"it counts {view.left} members left, its nodes do not")
        return view

    def state(self) -> WorkflowState:
        """The whole state (every node row loaded)."""
        n = len(self.graph.nodes)
        return WorkflowState(
            id=self.submitted.id,
            graph=self.graph,
            status=self.status,
            tasks=list(self.submitted.tasks),
            remaining=self.remaining.all(n),
            done=self.done.all(n),
            left=self.left,
            ttls=list(self.submitted.ttls),
            error=self.error,
            created_at=self.submitted.created_at,
            finished_at=self.finished_at,
        )

    def rows(self) -> tuple[list[int], list[int], list[str | None]]:
        """The node rows changed, as the step statement's arrays."""
        keys = sorted(self.changed)
        done = [self.done[k] for k in keys]
        values = [None if d is None else d.value for d in done]
        return keys, [self.remaining[k] for k in keys], values


def needed(submitted: Submitted, key: int) -> list[int]:
    """The nodes an outcome of ``key`` reads or writes when it neither fails nor ends its
    workflow: its own, its children's and its ``on_error``'s."""
    node = submitted.graph.nodes[key]
    extra = [] if node.on_error is None else [node.on_error]
    return [key, *submitted.graph.children()[key], *extra]
