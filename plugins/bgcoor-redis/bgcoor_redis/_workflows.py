"""The workflow store: each workflow a hash, stepped by Lua in the call that stores a
member's outcome.

A workflow is the hash ``wf:<id>`` under the prefix (fields in ``lua/workflow.lua``) and
``wf:<id>:parked``, the messages of members not released yet. ``lua/wf_submit.lua``
stores it with every member's record and pushes the roots; ``lua/wf_save.lua`` and
``lua/wf_complete.lua`` are ``save.lua`` and ``complete.lua`` for a member (same checks
and refusals, no expiry) followed by the rule of :func:`bgcoor_core.kit.apply_outcome`,
ported to ``wf_step``; ``lua/wf_cancel.lua`` is :func:`~bgcoor_core.kit.cancel_all` and
``lua/wf_reopen.lua`` stores a dead member requeued from the dead letters and applies
:func:`~bgcoor_core.kit.reopen` (``wf_reopen``). One script call each, so a member's
outcome, its count and its dependents' release are one step, however many workers
finish members at once.

A hash written by something else (not a hash, fields missing or unreadable) never costs
a member's outcome: the record is stored (and the message acked) and the workflow is
left as it is, with a warning; :meth:`RedisWorkflows.get_workflow` and
:meth:`~RedisWorkflows.cancel_workflow` raise :class:`~bgcoor_core.CorruptRecordError`
naming it. When a workflow ends, its keys expire with its longest-lived member record
(:func:`~bgcoor_core.kit.expiry`; never, if one has no TTL); a failed workflow keeps the
parked messages of the members its failure dropped until then, and a reopen lifts
every TTL again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bgcoor_core import (
    CapabilityError,
    CorruptRecordError,
    DuplicateTaskError,
    Message,
    Reservation,
    Task,
    TaskStatus,
    kit,
)
from bgcoor_core.kit import WorkflowState

from ._encoding import message_args, raise_for, record_args, text

if TYPE_CHECKING:
    from ._backend import RedisBackend

log = logging.getLogger("bgcoor.redis")


def state_fields(state: WorkflowState) -> list[Any]:
    """The hash of a new workflow as field, value pairs (``lua/workflow.lua``)."""
    graph = state.graph
    children = graph.children()
    leaves = _leaves(graph.result)
    fields: list[Any] = [
        "status",
        state.status.value,
        "policy",
        graph.on_failure.value,
        "left",
        sum(done is None for done in state.done),
        "n",
        len(graph.nodes),
        "leaves",
        ",".join(map(str, leaves)),
        "graph",
        graph.to_json(),
        "created",
        state.created_at.isoformat(),
    ]
    if state.error is not None:
        fields += ["error", state.error]
    for node in graph.nodes:
        k = node.key
        ttl = state.ttls[k]
        fields += ["t:" + str(k), state.tasks[k], "n:" + str(k), node.task]
        fields += ["r:" + str(k), state.remaining[k]]
        fields += ["c:" + str(k), ",".join(map(str, children[k]))]
        fields += ["ttl:" + str(k), "" if ttl is None else repr(float(ttl))]
        if node.on_error is not None:
            fields += ["e:" + str(k), node.on_error]
        if node.errback:
            fields += ["x:" + str(k), "1"]
        if state.done[k] is not None:
            fields += ["d:" + str(k), state.done[k]]
    return fields


def _leaves(shape: Any) -> list[int]:
    if isinstance(shape, int):
        return [shape]
    return [key for part in shape for key in _leaves(part)]


def submit_args(
    state: WorkflowState, tasks: Sequence[Task], messages: Sequence[Message]
) -> list[Any]:
    """``lua/wf_submit.lua``'s arguments after the prefix; everything checked first."""
    by_id = {m.id: m for m in messages}
    fields = state_fields(state)
    records: list[Any] = []
    roots: list[Any] = []
    parked: list[Any] = []
    for task in tasks:
        records += record_args(task)
        message = by_id.get(task.id)
        if message is None:
            raise ValueError(f"workflow {state.id}: member {task.id} has no message")
        if task.status is TaskStatus.WAITING:
            parked += [int(task.headers[kit.NODE_HEADER]), *_member_args(message)]
        else:
            roots += _member_args(message)
    counts = [len(fields) // 2, len(records) // 6, len(roots) // 5, len(parked) // 6]
    return [state.id, *counts, *fields, *records, *roots, *parked]


def _member_args(message: Message) -> list[Any]:
    """A member's message as ``lua/wf_submit.lua`` takes it: :func:`message_args` without
    the gate, which the core refuses on a member (its message waits in the workflow's
    hash, whose release would not keep it)."""
    if message.gate is not None:
        raise CapabilityError(
            f"task {message.id}: a workflow member cannot have a rate or concurrency limit"
        )
    return message_args(message)[:-1]


class RedisWorkflows:
    """The :class:`~bgcoor_core.WorkflowStore` of a Redis backend; see the module docstring."""

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend

    async def submit_workflow(
        self, state: WorkflowState, tasks: Sequence[Task], messages: Sequence[Message]
    ) -> None:
        reply = await self.backend.run("wf_submit", *submit_args(state, tasks, messages))
        if isinstance(reply, list) and reply and text(reply[0]) == "DUPLICATE_WORKFLOW":
            raise DuplicateTaskError(f"workflow {state.id} already exists")
        if reply != 0:
            task_id = text(reply[1])
            status = next((t.status.value for t in tasks if t.id == task_id), "")
            raise_for(reply, task_id, status)

    async def save_member(self, task: Task) -> None:
        workflow, node = _member(task)
        reply = await self.backend.run(
            "wf_save", *record_args(task), workflow, node, task.error or ""
        )
        self._settled(reply, task, workflow)

    async def complete_member(self, reservation: Reservation, task: Task) -> None:
        workflow, node = _member(task)
        _, *record = record_args(task)
        reply = await self.backend.run(
            "wf_complete",
            reservation.task.id,
            reservation.token,
            *record,
            workflow,
            node,
            task.error or "",
        )
        self._settled(reply, task, workflow)

    async def reopen_member(self, task: Task) -> None:
        workflow, node = _member(task)
        reply = await self.backend.run("wf_reopen", *record_args(task), workflow, node)
        self._settled(reply, task, workflow)

    async def cancel_workflow(self, workflow_id: str) -> bool:
        reply = await self.backend.run("wf_cancel", workflow_id)
        if isinstance(reply, list):
            raise _corrupt(workflow_id, text(reply[1]))
        return bool(reply)

    async def get_workflow(self, workflow_id: str) -> WorkflowState | None:
        reply = await self.backend.run("wf_get", workflow_id)
        if len(reply) % 2:
            raise _corrupt(workflow_id, text(reply[0]))
        if not reply:
            return None
        fields = {text(reply[at]): text(reply[at + 1]) for at in range(0, len(reply), 2)}
        try:
            return _state(workflow_id, fields)
        except (KeyError, ValueError, ValidationError) as exc:
            raise _corrupt(workflow_id, f"{type(exc).__name__}: {exc}") from None

    @staticmethod
    def _settled(reply: Any, task: Task, workflow: str) -> None:
        if isinstance(reply, list) and reply and text(reply[0]) == "WORKFLOW":
            log.warning(
                "task %s: record stored, but its workflow %s was not stepped: %s",
                task.id,
                workflow,
                text(reply[1]),
            )
            return
        raise_for(reply, task.id, task.status.value)


def _member(task: Task) -> tuple[str, int]:
    member = kit.member_of(task)
    if member is None:
        raise ValueError(f"task {task.id} is not a workflow member (no {kit.WORKFLOW_HEADER})")
    return member


def _corrupt(workflow_id: str, why: str) -> CorruptRecordError:
    return CorruptRecordError(f"stored workflow {workflow_id} cannot be read: {why}")


def _state(workflow_id: str, fields: dict[str, str]) -> WorkflowState:
    """A :class:`WorkflowState` rebuilt from the workflow's hash."""
    n = int(fields["n"])
    keys = range(n)
    ttls = [fields[f"ttl:{k}"] for k in keys]
    return WorkflowState.model_validate(
        {
            "id": workflow_id,
            "graph": json.loads(fields["graph"]),
            "status": fields["status"],
            "tasks": [fields[f"t:{k}"] for k in keys],
            "remaining": [int(fields[f"r:{k}"]) for k in keys],
            "done": [fields.get(f"d:{k}") for k in keys],
            "ttls": [float(ttl) if ttl else None for ttl in ttls],
            "left": int(fields["left"]),
            "error": fields.get("error"),
            "created_at": fields["created"],
            "finished_at": fields.get("finished"),
        }
    )
