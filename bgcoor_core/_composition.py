"""Workflows as data: ``chain``, ``group``, ``chord`` and ``Workflow`` compile to one graph.

Every composition, however nested, becomes a :class:`Graph`: nodes (one task each), the
parents each waits for, and how its parents' results reach it. A node's ``inputs`` are
*shapes*, one per positional argument put before its own arguments: a shape is a node's
key (that node's result) or a list of shapes (a list of results, as a chord's callback
gets). ``chain(a, b)`` gives ``b`` the input ``[a]``; ``chord(group(x, y), z)`` gives ``z``
``[[x, y]]``; ``wf.add(t, after=[a, b])`` gives ``t`` ``[a, b]``. An immutable signature
(``.si()``) waits for its parents but takes none of their results.

A graph is plain JSON (:meth:`Graph.to_json`), so it can be stored, shown by the command
line, or submitted by something other than Python.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, Union

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from typing_extensions import TypeAliasType

from ._errors import InvalidWorkflowError
from ._signature import Signature
from ._values import Value

#: A node's key, or a list of shapes: where an argument's value comes from.
Shape = TypeAliasType("Shape", "int | list[Shape]")


class OnFailure(enum.StrEnum):
    """What a workflow does when a member fails for good."""

    #: The workflow fails; members not started yet are cancelled; ``on_error`` runs.
    FAIL = "fail"
    #: Dependents run anyway, given a failure marker in place of the failed result.
    CONTINUE = "continue"


class Node(BaseModel):
    """One task of a workflow."""

    model_config = ConfigDict(frozen=True)

    key: int
    task: str
    payload: Value = None
    options: dict[str, Any] = Field(default_factory=dict)
    #: Keys of the nodes this one waits for, ascending.
    parents: list[int] = Field(default_factory=list)
    #: Positional arguments put first, each a shape of parents' results.
    inputs: list[Shape] = Field(default_factory=list)
    #: The node run (once) if this one fails for good, given the failure.
    on_error: int | None = None
    #: This node is some other node's ``on_error``: it runs only on that failure.
    errback: bool = False


class Graph(BaseModel):
    """A whole workflow: its nodes, what its handle's result is, its failure policy."""

    model_config = ConfigDict(frozen=True)

    nodes: list[Node]
    #: The shape of the workflow's result (a chain's last node, a group's list, ...).
    result: Shape
    on_failure: OnFailure = OnFailure.FAIL
    _children: dict[int, list[int]] | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:  # what it is, not what was worked out from it
        if not isinstance(other, Graph):
            return NotImplemented
        return (self.nodes, self.result, self.on_failure) == (
            other.nodes,
            other.result,
            other.on_failure,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable parts: unhashable, as before

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> Graph:
        return cls.model_validate_json(data)

    def children(self) -> dict[int, list[int]]:
        """Each node's dependents (errbacks excluded: they hang off ``on_error``); worked
        out once per graph object."""
        if self._children is None:
            found: dict[int, list[int]] = {node.key: [] for node in self.nodes}
            for node in self.nodes:
                for parent in node.parents:
                    found[parent].append(node.key)
            self._children = found
        return self._children

    def problem(self) -> str | None:
        """Why a stored graph cannot be stepped (a step would fail midway on it), or
        ``None``: nodes out of order, or references to nodes it does not have. For stores
        reading a graph written by something else."""
        keys = range(len(self.nodes))
        for index, node in enumerate(self.nodes):
            refs = [*node.parents, *([] if node.on_error is None else [node.on_error])]
            if node.key != index or any(ref not in keys for ref in refs):
                return f"node {index} of its graph refers to nodes it does not have"
        if any(leaf not in keys for leaf in _leaves(self.result)):
            return "its result refers to nodes it does not have"
        return None

    def roots(self) -> list[int]:
        """Nodes that start at once: no parents, and not an errback."""
        return [n.key for n in self.nodes if not n.parents and not n.errback]


# -- compositions -------------------------------------------------------------------------


Item: TypeAlias = Union[Signature, "Chain", "Group", "Chord"]


class _Submittable:
    """``await composition.enqueue()``: submitted to the manager of its first signature."""

    async def enqueue(self) -> Any:
        item: Any = self
        manager = _manager_of(item)
        return await manager.submit_workflow(compile_item(item))


@dataclass(frozen=True)
class Chain(_Submittable):
    """Run ``items`` one after another; each result is the next one's first argument."""

    items: tuple[Item, ...]


@dataclass(frozen=True)
class Group(_Submittable):
    """Run ``items`` side by side; the result is their results, in submission order."""

    items: tuple[Item, ...]


@dataclass(frozen=True)
class Chord(_Submittable):
    """Run ``header`` (a group), then ``callback`` with the list of its results."""

    header: Group
    callback: Item


def _manager_of(item: Item) -> Any:
    for signature in _signatures(item):
        if signature.manager is not None:
            return signature.manager
    raise InvalidWorkflowError(
        "no signature here knows its manager: build them with task.s(...), or submit the "
        "graph with manager.submit_workflow()"
    )


def _signatures(item: Item) -> list[Signature]:
    if isinstance(item, Signature):
        return [item]
    if isinstance(item, Chord):
        return [*_signatures(item.header), *_signatures(item.callback)]
    return [s for part in item.items for s in _signatures(part)]


def chain(*items: Item) -> Chain:
    """``chain(fetch.s(url), parse.s(), store.s(table="pages"))``."""
    if not items:
        raise InvalidWorkflowError("chain() needs at least one signature")
    return Chain(tuple(_item(i) for i in items))


def group(*items: Item | Iterable[Item]) -> Group:
    """``group(resize.s(i) for i in range(100))`` or ``group(a.s(), b.s())``."""
    flat: list[Item] = []
    for item in items:
        if isinstance(item, Signature | Chain | Group | Chord):
            flat.append(item)
        else:
            flat.extend(_item(i) for i in item)
    return Group(tuple(flat))


def chord(header: Group | Iterable[Item], callback: Item) -> Chord:
    """``chord(group(score.s(d) for d in docs), summarize.s())``."""
    body = header if isinstance(header, Group) else group(header)
    return Chord(body, _item(callback))


def _item(value: object) -> Item:
    if isinstance(value, Signature | Chain | Group | Chord):
        return value
    raise InvalidWorkflowError(
        f"a workflow holds signatures (task.s(...)), chains, groups and chords, "
        f"not {type(value).__name__}"
    )


@dataclass
class _Builder:
    """Turns compositions into nodes, numbering them in submission order."""

    nodes: list[Node] = field(default_factory=list)

    def add(
        self,
        signature: Signature,
        before: Shape | None,
        *,
        inputs: list[Shape] | None = None,
        on_error: int | None = None,
        errback: bool = False,
    ) -> int:
        parents = sorted(set(_leaves(before))) if before is not None else []
        if inputs is None:
            inputs = [] if before is None or signature.immutable else [before]
        if signature.immutable:
            inputs = []
        key = len(self.nodes)
        self.nodes.append(
            Node(
                key=key,
                task=signature.task,
                payload=signature.payload,
                options=dict(signature.options),
                parents=parents,
                inputs=inputs,
                on_error=on_error,
                errback=errback,
            )
        )
        return key

    def compile(self, item: Item, before: Shape | None) -> Shape:
        """Add ``item`` after ``before`` (its input); return the shape of its result."""
        if isinstance(item, Signature):
            return self.add(item, before)
        if isinstance(item, Chain):
            shape = before
            for part in item.items:
                shape = self.compile(part, shape)
            assert shape is not None
            return shape
        if isinstance(item, Group):
            return [self.compile(part, before) for part in item.items]
        return self.compile(item.callback, self.compile(item.header, before))


def compile_item(item: Item, on_failure: OnFailure | str = OnFailure.FAIL) -> Graph:
    """The graph of a chain, group, chord or lone signature."""
    builder = _Builder()
    result = builder.compile(_item(item), None)
    return _checked(Graph(nodes=builder.nodes, result=result, on_failure=OnFailure(on_failure)))


class NodeRef:
    """A node added to a :class:`Workflow`: what ``after=`` takes."""

    __slots__ = ("key", "workflow")

    def __init__(self, workflow: Workflow, key: int) -> None:
        self.workflow = workflow
        self.key = key

    def __repr__(self) -> str:
        return f"NodeRef({self.key})"


class Workflow:
    """A DAG built node by node::

        wf = Workflow(on_failure="fail")
        a = wf.add(extract.s(src))
        b = wf.add(transform.s(), after=[a])  # a's result is its first argument
        c = wf.add(load.s(), after=[b], on_error=alert.s())
        handle = await wf.enqueue()           # bound to a manager by manager.submit_workflow

    Parents' results come first, as positional arguments, in the order of ``after``.
    """

    def __init__(self, on_failure: OnFailure | str = "fail") -> None:
        try:
            self.on_failure = OnFailure(on_failure)
        except ValueError:
            raise InvalidWorkflowError(
                f"on_failure must be 'fail' or 'continue', got {on_failure!r}"
            ) from None
        self._builder = _Builder()
        self._sinks: list[int] = []
        self._manager: Any = None

    def add(
        self,
        item: Item,
        *,
        after: Sequence[NodeRef] = (),
        on_error: Signature | None = None,
    ) -> NodeRef:
        """Add a signature (or a chain, group or chord, run as one step) after ``after``."""
        for parent in after:
            if not isinstance(parent, NodeRef) or parent.workflow is not self:
                raise InvalidWorkflowError(
                    f"after= takes what this workflow's add() returned, not {parent!r}"
                )
        if self._manager is None:
            found = [s.manager for s in _signatures(_item(item)) if s.manager is not None]
            self._manager = found[0] if found else None
        inputs: list[Shape] = [p.key for p in after]
        before: Shape | None = inputs or None
        builder = self._builder
        if isinstance(item, Signature):
            key = builder.add(item, before, inputs=inputs)
        else:
            shape = builder.compile(_item(item), before)
            key = _last_key(shape, len(builder.nodes))
        if on_error is not None:
            errback = builder.add(_item_signature(on_error), None, errback=True)
            node = builder.nodes[key]
            builder.nodes[key] = node.model_copy(update={"on_error": errback})
        for parent in after:
            if parent.key in self._sinks:
                self._sinks.remove(parent.key)
        self._sinks.append(key)
        return NodeRef(self, key)

    async def enqueue(self) -> Any:
        """Submit it to the manager of its signatures; a handle on the whole workflow."""
        if self._manager is None:
            raise InvalidWorkflowError("an empty workflow: add() a signature first")
        return await self._manager.submit_workflow(self.graph())

    def graph(self) -> Graph:
        sinks = self._sinks
        result: Shape = sinks[0] if len(sinks) == 1 else list(sinks)
        return _checked(Graph(nodes=self._builder.nodes, result=result, on_failure=self.on_failure))


def _item_signature(value: object) -> Signature:
    if isinstance(value, Signature):
        return value
    raise InvalidWorkflowError(f"on_error= takes a signature (task.s(...)), not {value!r}")


def _last_key(shape: Shape, count: int) -> int:
    """The node a composition added last stands for it in ``after=`` (its sink)."""
    leaves = _leaves(shape)
    if len(leaves) != 1:
        raise InvalidWorkflowError(
            "Workflow.add() of a group needs a callback to depend on: add a chord instead"
        )
    return leaves[0]


def _leaves(shape: Shape) -> list[int]:
    if isinstance(shape, int):
        return [shape]
    return [key for part in shape for key in _leaves(part)]


def _checked(graph: Graph) -> Graph:
    """Refuse what cannot run: no nodes, parents that do not exist, cycles."""
    if not graph.nodes:
        raise InvalidWorkflowError("a workflow needs at least one task")
    keys = {node.key for node in graph.nodes}
    for node in graph.nodes:
        for parent in node.parents:
            if parent not in keys or parent == node.key:
                raise InvalidWorkflowError(f"node {node.key} ({node.task}) waits for {parent}")
    # Kahn: every node must be reachable in a topological order
    remaining = {node.key: len(node.parents) for node in graph.nodes}
    children = graph.children()
    ready = [key for key, count in remaining.items() if count == 0]
    seen = 0
    while ready:
        key = ready.pop()
        seen += 1
        for child in children[key]:
            remaining[child] -= 1
            if remaining[child] == 0:
                ready.append(child)
    if seen != len(graph.nodes):
        stuck = sorted(key for key, count in remaining.items() if count > 0)
        raise InvalidWorkflowError(f"the workflow has a cycle through nodes {stuck[:10]}")
    return graph
