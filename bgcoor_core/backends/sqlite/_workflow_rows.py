"""One workflow's rows: its state as submitted (``workflow_graphs.state``, never
rewritten), what its steps change of the workflow as a whole (``workflows.progress``:
status, left, error, finished_at) and each node's progress (a ``workflow_nodes`` row:
parents not done, done status). A step never rewrites, nor reads, the large submitted row.

The submitted state (the graph, its payloads, the members) is parsed once per process and
kept in :class:`Parsed`. A step works on a :class:`RowState`,
which reads node rows only as the rule asks for them (the member's node, its dependents
and its ``on_error`` in one query up front) and writes back only those it changed, so a
member's step costs what its node and its dependents cost, whatever the workflow's size.
"""

from __future__ import annotations

import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, ConfigDict, ValidationError

from ..._codec import printable
from ..._composition import Graph
from ..._errors import CorruptRecordError
from ..._task import TaskStatus
from ..._workflows import WorkflowState, WorkflowStatus

#: The fields of :class:`WorkflowState` in ``workflows.progress``.
PROGRESS = frozenset({"status", "left", "error", "finished_at"})
#: Those kept per node, in ``workflow_nodes``.
NODES = frozenset({"remaining", "done"})
#: Those that never change after submission (``workflows.state``).
SUBMITTED = frozenset({"id", "graph", "tasks", "ttls", "created_at"})

#: Node rows read one by one before a step reads all of them in one query.
_SINGLE_READS = 8
#: Node keys per ``IN (...)`` query, well under SQLite's limit of bound parameters.
_CHUNK = 500
_STATUSES = {s.value: s for s in TaskStatus}


class Progress(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: WorkflowStatus
    left: int
    error: str | None = None
    finished_at: datetime | None = None


class Parsed:
    """Submitted states already parsed on this connection, most recently used last, keyed
    by their row (workflow ids are never reused, and the row is never rewritten): a step
    reads and parses it only when it is new to this connection."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._states: OrderedDict[tuple[str, int], WorkflowState] = OrderedDict()

    def get(self, conn: sqlite3.Connection, workflow_id: str, rowid: int) -> WorkflowState:
        key = (workflow_id, rowid)
        state = self._states.get(key)
        if state is None:
            raw = conn.execute(
                "SELECT CAST(state AS BLOB) FROM workflow_graphs WHERE rowid = ?", (rowid,)
            ).fetchone()[0]
            state = _submitted(workflow_id, raw or b"")
            self._states[key] = state
            if len(self._states) > self._size:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        return state


class Nodes:
    """The node rows of one workflow a step has read, and those it changed."""

    def __init__(self, conn: sqlite3.Connection, workflow_id: str, size: int) -> None:
        self.conn = conn
        self.workflow_id = workflow_id
        self.size = size
        self.rows: dict[int, list[int | TaskStatus | None]] = {}
        self.changed: set[int] = set()
        self._reads = 0

    def load(self, keys: Iterable[int]) -> None:
        wanted = sorted({k for k in keys if k not in self.rows})
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            self._take(
                f"SELECT node, remaining, done FROM workflow_nodes WHERE workflow_id = ? "
                f"AND node IN ({marks})",
                (self.workflow_id, *chunk),
            )

    def load_all(self) -> None:
        if len(self.rows) < self.size:
            self._take(
                "SELECT node, remaining, done FROM workflow_nodes WHERE workflow_id = ?",
                (self.workflow_id,),
            )
        if len(self.rows) != self.size:
            missing = min(set(range(self.size)) - set(self.rows))
            raise corrupt(self.workflow_id, f"its node {missing} has no row")

    def row(self, key: int) -> list[int | TaskStatus | None]:
        row = self.rows.get(key)
        if row is None:
            self._reads += 1
            self.load_all() if self._reads > _SINGLE_READS else self.load([key])
            row = self.rows.get(key)
            if row is None:
                raise corrupt(self.workflow_id, f"its node {key} has no row")
        return row

    def write(self) -> None:
        self.conn.executemany(
            "UPDATE workflow_nodes SET remaining = ?, done = ? WHERE workflow_id = ? AND node = ?",
            [(*_columns(self.rows[k]), self.workflow_id, k) for k in sorted(self.changed)],
        )
        self.changed.clear()

    def _take(self, sql: str, params: tuple[object, ...]) -> None:
        for node, remaining, done in self.conn.execute(sql, params):
            if not isinstance(node, int) or node not in range(self.size):
                raise corrupt(self.workflow_id, f"it has a row for node {node!r}")
            if not isinstance(remaining, int) or remaining < 0:
                raise corrupt(self.workflow_id, f"its node {node} has {remaining!r} parents left")
            status = None if done is None else _STATUSES.get(done)
            if done is not None and status is None:
                raise corrupt(self.workflow_id, f"its node {node} is done as {done!r}")
            self.rows.setdefault(node, [remaining, status])


def _columns(row: list[int | TaskStatus | None]) -> tuple[int, str | None]:
    remaining, done = row
    assert isinstance(remaining, int)
    return remaining, None if done is None else str(done)


class _Remaining:
    def __init__(self, nodes: Nodes) -> None:
        self._nodes = nodes

    def __getitem__(self, key: int, /) -> int:
        value = self._nodes.row(key)[0]
        assert isinstance(value, int)
        return value

    def __setitem__(self, key: int, value: int, /) -> None:
        self._nodes.row(key)[0] = value
        self._nodes.changed.add(key)


class _Done:
    def __init__(self, nodes: Nodes) -> None:
        self._nodes = nodes

    def __getitem__(self, key: int, /) -> TaskStatus | None:
        value = self._nodes.row(key)[1]
        assert value is None or isinstance(value, TaskStatus)
        return value

    def __setitem__(self, key: int, value: TaskStatus | None, /) -> None:
        self._nodes.row(key)[1] = value
        self._nodes.changed.add(key)


class RowState:
    """A :class:`~bgcoor_core.kit.Progress` over a workflow's rows, for one step."""

    def __init__(self, submitted: WorkflowState, progress: Progress, nodes: Nodes) -> None:
        self.submitted = submitted
        self.nodes = nodes
        self.remaining = _Remaining(nodes)
        self.done = _Done(nodes)
        self.status = progress.status
        self.left = progress.left
        self.error = progress.error
        self.finished_at = progress.finished_at

    @property
    def graph(self) -> Graph:
        return self.submitted.graph

    @property
    def id(self) -> str:
        return self.submitted.id

    @property
    def tasks(self) -> list[str]:
        return self.submitted.tasks

    def whole(self) -> WorkflowState:
        """The full state (every node read): what ``get_workflow`` returns."""
        self.nodes.load_all()
        rows = [self.nodes.rows[k] for k in range(self.nodes.size)]
        return self.submitted.model_copy(
            update={
                "tasks": list(self.submitted.tasks),
                "status": self.status,
                "left": self.left,
                "error": self.error,
                "finished_at": self.finished_at,
                "remaining": [r[0] for r in rows],
                "done": [r[1] for r in rows],
            }
        )


def insert(conn: sqlite3.Connection, state: WorkflowState) -> None:
    conn.execute(
        "INSERT INTO workflows (id, status, progress) VALUES (?, ?, ?)",
        (state.id, state.status.value, state.model_dump_json(include=set(PROGRESS))),
    )
    conn.execute(  # as submitted: its progress fields are never read from here
        "INSERT INTO workflow_graphs (id, state) VALUES (?, ?)",
        (state.id, state.model_dump_json()),
    )
    conn.executemany(
        "INSERT INTO workflow_nodes (workflow_id, node, remaining, done) VALUES (?, ?, ?, ?)",
        [
            (state.id, k, remaining, None if done is None else str(done))
            for k, (remaining, done) in enumerate(zip(state.remaining, state.done, strict=True))
        ],
    )


def write(
    conn: sqlite3.Connection, state: RowState, expires: tuple[float | None] | None = None
) -> None:
    """Write back what the step changed, and the workflow's expiry if ``expires`` says
    (a time, or ``None``: kept)."""
    state.nodes.write()
    progress = Progress(
        status=state.status, left=state.left, error=state.error, finished_at=state.finished_at
    ).model_dump_json()
    if expires is None:
        conn.execute(
            "UPDATE workflows SET status = ?, progress = ? WHERE id = ?",
            (state.status.value, progress, state.id),
        )
    else:
        conn.execute(
            "UPDATE workflows SET status = ?, progress = ?, expires_at = ? WHERE id = ?",
            (state.status.value, progress, expires[0], state.id),
        )


def read(
    conn: sqlite3.Connection, parsed: Parsed, workflow_id: str, *, member: int | None = None
) -> RowState | None:
    """The workflow's rows (those a step of node ``member`` reads, read up front: its own,
    its dependents', its ``on_error``'s), or ``None`` if there is none or
    it expired; :class:`CorruptRecordError` naming the workflow if a row cannot be read
    or does not fit its graph."""
    row = conn.execute(
        "SELECT g.rowid, CAST(w.progress AS BLOB) FROM workflows AS w "
        "LEFT JOIN workflow_graphs AS g ON g.id = w.id "
        "WHERE w.id = ? AND (w.expires_at IS NULL OR w.expires_at > ?)",
        (workflow_id, time.time()),
    ).fetchone()
    if row is None:
        return None
    if row[0] is None:
        raise corrupt(workflow_id, "it has no row in workflow_graphs")
    submitted = parsed.get(conn, workflow_id, row[0])
    try:
        progress = Progress.model_validate_json(row[1] or b"")
    except ValidationError as exc:
        problem = f"column progress is no workflow progress: {_why(exc)}"
        raise corrupt(workflow_id, problem) from None
    n = len(submitted.graph.nodes)
    if progress.left not in range(n + 1):
        raise corrupt(workflow_id, f"its progress counts {progress.left} members left")
    nodes = Nodes(conn, workflow_id, n)
    if member is not None and member in range(n):
        node = submitted.graph.nodes[member]
        children = submitted.graph.children()[member]
        nodes.load([member, *children, *([] if node.on_error is None else [node.on_error])])
    return RowState(submitted, progress, nodes)


def read_whole(conn: sqlite3.Connection, parsed: Parsed, workflow_id: str) -> WorkflowState | None:
    state = read(conn, parsed, workflow_id)
    return None if state is None else state.whole()


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
    return state.graph.problem()
