"""One workflow's row: its state as submitted (``state``, never rewritten) and what steps
change (``progress``: status, remaining, done, left, error, finished_at).

A step rewrites only the small ``progress`` JSON; the submitted state (the graph, its
payloads, the members) is parsed once per process and kept in :class:`Parsed`, keyed by
its exact bytes, so a step of a large workflow does not parse and rewrite its whole graph.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from ..._codec import printable
from ..._composition import _leaves
from ..._errors import CorruptRecordError
from ..._task import TaskStatus
from ..._workflows import WorkflowState, WorkflowStatus

#: The fields of :class:`WorkflowState` that ``apply_outcome`` and ``cancel_all`` change.
PROGRESS = frozenset({"status", "remaining", "done", "left", "error", "finished_at"})
#: Those that never change after submission.
SUBMITTED = frozenset({"id", "graph", "tasks", "ttls", "created_at"})


class Progress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: WorkflowStatus
    remaining: list[int]
    done: list[TaskStatus | None]
    left: int = -1  # as WorkflowState: -1 when not counted yet
    error: str | None = None
    finished_at: datetime | None = None


class Parsed:
    """Submitted states already parsed on this connection, most recently used last."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._states: OrderedDict[tuple[str, bytes], WorkflowState] = OrderedDict()

    def get(self, workflow_id: str, raw: bytes) -> WorkflowState:
        key = (workflow_id, raw)
        state = self._states.get(key)
        if state is None:
            state = _submitted(workflow_id, raw)
            self._states[key] = state
            if len(self._states) > self._size:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return state


def insert(conn: sqlite3.Connection, state: WorkflowState) -> None:
    conn.execute(
        "INSERT INTO workflows (id, status, state, progress) VALUES (?, ?, ?, ?)",
        (state.id, state.status.value, state.model_dump_json(), _progress_json(state)),
    )


def write_progress(conn: sqlite3.Connection, state: WorkflowState) -> None:
    conn.execute(
        "UPDATE workflows SET status = ?, progress = ? WHERE id = ?",
        (state.status.value, _progress_json(state), state.id),
    )


def _progress_json(state: WorkflowState) -> str:
    return state.model_dump_json(include=set(PROGRESS))


def read(conn: sqlite3.Connection, parsed: Parsed, workflow_id: str) -> WorkflowState | None:
    """The state (a copy the caller may change), or ``None``; :class:`CorruptRecordError`
    naming the workflow if its row cannot be read or does not fit its graph."""
    row = conn.execute(
        "SELECT CAST(state AS BLOB), CAST(progress AS BLOB) FROM workflows WHERE id = ?",
        (workflow_id,),
    ).fetchone()
    if row is None:
        return None
    submitted = parsed.get(workflow_id, row[0] or b"")
    try:
        progress = Progress.model_validate_json(row[1] or b"")
    except ValidationError as exc:
        problem = f"column progress is no workflow progress: {_why(exc)}"
        raise corrupt(workflow_id, problem) from None
    n = len(submitted.graph.nodes)
    if len(progress.remaining) != n or len(progress.done) != n:
        raise corrupt(workflow_id, f"its progress does not have one entry for each of {n} nodes")
    if progress.left not in (-1, progress.done.count(None)):
        raise corrupt(workflow_id, f"its progress counts {progress.left} members left")
    fields = progress.model_dump()
    return submitted.model_copy(update={**fields, "tasks": list(submitted.tasks)})


def corrupt(workflow_id: str, problem: str) -> CorruptRecordError:
    return CorruptRecordError(
        f"corrupt state of workflow {printable(workflow_id, 80)} in SQLite table workflows: "
        + printable(problem, 300)
    )


def _why(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)[:3]
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def _submitted(workflow_id: str, raw: bytes) -> WorkflowState:
    try:
        state = WorkflowState.model_validate_json(raw)
    except ValidationError as exc:
        raise corrupt(workflow_id, f"column state is no workflow state: {_why(exc)}") from None
    problem = _misfit(state, workflow_id)
    if problem is not None:
        raise corrupt(workflow_id, problem)
    return state


def _misfit(state: WorkflowState, workflow_id: str) -> str | None:
    """Why a state that parsed cannot be stepped (it would fail mid-step), or ``None``."""
    if state.id != workflow_id:
        return f"it names workflow {state.id}"
    n = len(state.graph.nodes)
    if len(state.tasks) != n or len(state.ttls) != n:
        return f"its members and TTLs do not have one entry for each of its {n} nodes"
    keys = range(n)
    for index, node in enumerate(state.graph.nodes):
        refs = [*node.parents, *([] if node.on_error is None else [node.on_error])]
        if node.key != index or any(ref not in keys for ref in refs):
            return f"node {index} of its graph refers to nodes it does not have"
    if any(leaf not in keys for leaf in _leaves(state.graph.result)):
        return "its result refers to nodes it does not have"
    return None
