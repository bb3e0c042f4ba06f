"""Message bodies no worker may ever run, generated with Hypothesis.

``bad_bodies(n)`` draws ``n`` bodies, each a :data:`Render` that makes the bytes for a
given message id (task-shaped bodies carry that id, so they fail for the reason their
kind names and not for a mismatched id, except the ``id-mismatch`` kind itself).
"""

from __future__ import annotations

import json
import pickle
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bgcoor_core import Task
from bgcoor_core._task import TASK_NAME

from .outcome import QUEUE

JSON_HEADER = b"application/json\n"
PICKLE = "application/x-python-pickle"

Render = Callable[[str], bytes]
Kinded = tuple[str, Render]

HOSTILE_NAMES = [
    "it's",
    'say "hi"',
    "x'; DROP TABLE tasks; --",
    'q"; FLUSHALL; --',
    "a" * 10_000,
    "nul\x00byte",
    "new\nline",
    "esc\x1b[31m",
    "tab\tname",
    "ünïcode",
    "",
    " space",
    "*",
    "{q}",
    "../etc/passwd",
]


def marker_pickle(marker: Path) -> bytes:
    """A pickle body whose loading creates ``marker`` (``Path.touch``)."""

    class Touch:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    return PICKLE.encode() + b"\n" + pickle.dumps(Touch())


def _task(message_id: str, **fields: Any) -> dict[str, Any]:
    body = {"id": message_id, "name": "rel.work", "queue": QUEUE, "payload": {"args": ["x"]}}
    body.update(fields)
    return body


def _json(fields: dict[str, Any]) -> Render:
    return lambda message_id: JSON_HEADER + json.dumps(_task(message_id, **fields)).encode()


def _not_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return True
    return False


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
not_a_str = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.lists(st.integers(), max_size=3)
)
not_an_int = (
    st.text(max_size=10).map(lambda t: "x" + t)
    | st.lists(st.integers(), max_size=3)
    | st.floats().filter(lambda f: not f.is_integer())
)
FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
unknown_names = st.from_regex(TASK_NAME, fullmatch=True).filter(lambda n: not n.startswith("rel."))

no_header = st.binary(max_size=200).filter(lambda b: b"\n" not in b).map(lambda b: lambda _: b)
foreign_type = st.tuples(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40).filter(
        lambda t: t != "application/json"
    ),
    st.binary(max_size=100),
).map(lambda p: lambda _: p[0].encode() + b"\n" + p[1])
binary_header = (
    st.binary(min_size=1, max_size=20)
    .filter(lambda b: b"\n" not in b and not b.isascii())
    .map(lambda b: lambda _: b + b"\n{}")
)
invalid_json = st.binary(max_size=200).filter(_not_json).map(lambda b: lambda _: JSON_HEADER + b)
invalid_utf8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]).map(
    lambda bad: (
        lambda message_id: (
            JSON_HEADER
            + json.dumps(_task(message_id, payload={"args": ["@@"]})).encode().replace(b"@@", bad)
        )
    )
)
not_a_task = json_values.map(lambda v: lambda _: JSON_HEADER + json.dumps(v).encode())
bad_field = st.one_of(
    st.integers(max_value=-1).map(lambda n: {"attempts": n}),
    st.integers(max_value=-1).map(lambda n: {"max_retries": n}),
    st.text(max_size=12)
    .filter(lambda s: s not in {"pending", "scheduled"})
    .map(lambda s: {"status": s + "!"}),
    st.floats(max_value=0).map(lambda f: {"timeout": f}),
    st.text(max_size=12).map(lambda s: {"eta": "not a date " + s}),
    st.sampled_from(HOSTILE_NAMES).map(lambda n: {"name": n}),
    st.sampled_from(HOSTILE_NAMES).map(lambda n: {"queue": n}),
    # An unknown field named like one is a newer producer's and is kept (forward
    # compatibility, tested in tests/test_task.py): only a name no field could have is bad.
    st.text(min_size=1, max_size=12)
    .filter(lambda k: k not in Task.model_fields and not FIELD_NAME.fullmatch(k))
    .map(lambda k: {k: 1}),
).map(_json)
unknown_task = unknown_names.map(lambda n: _json({"name": n}))
bad_arguments = st.one_of(
    not_a_str.map(lambda v: {"args": [v]}),
    not_an_int.map(lambda v: {"args": ["x", v]}),
    st.just({"args": []}),
    st.lists(st.integers(), min_size=4, max_size=6).map(lambda v: {"args": ["x", *v]}),
    st.text(min_size=1, max_size=8)
    .filter(lambda k: k not in {"key", "ms", "pad"})
    .map(lambda k: {"args": ["x"], "kwargs": {k: 1}}),
    json_values.filter(lambda v: v is not None and not isinstance(v, dict)),
    st.dictionaries(
        st.text(max_size=6).filter(lambda k: k not in {"args", "kwargs"}),
        json_values,
        min_size=1,
        max_size=3,
    ),
).map(lambda payload: _json({"payload": payload}))
id_mismatch = st.uuids().map(lambda u: _json({"id": str(u), "payload": {"args": ["mismatch"]}}))
queue_mismatch = st.sampled_from(["other", "default2", "q:dead"]).map(
    lambda q: _json({"queue": q, "payload": {"args": ["qmismatch"]}})
)

KINDS: dict[str, st.SearchStrategy[Render]] = {
    "no-header": no_header,
    "foreign-content-type": foreign_type,
    "binary-header": binary_header,
    "invalid-json": invalid_json,
    "invalid-utf8": invalid_utf8,
    "not-a-task": not_a_task,
    "bad-field": bad_field,
    "unknown-task": unknown_task,
    "bad-arguments": bad_arguments,
    "id-mismatch": id_mismatch,
    "queue-mismatch": queue_mismatch,
}


def bad_bodies(count: int) -> list[Kinded]:
    """``count`` bodies drawn across every kind (at least one of each)."""
    drawn: list[Kinded] = []
    any_kind = st.sampled_from(sorted(KINDS)).flatmap(
        lambda kind: KINDS[kind].map(lambda render: (kind, render))
    )

    @settings(
        max_examples=count,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(any_kind)
    def collect(body: Kinded) -> None:
        drawn.append(body)

    collect()
    for kind, strategy in KINDS.items():  # every kind at least once, however few drawn
        if not any(k == kind for k, _ in drawn):
            drawn.append((kind, _first(strategy)))
    return drawn


def _first(strategy: st.SearchStrategy[Render]) -> Render:
    found: list[Render] = []

    @settings(
        max_examples=1,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        deadline=None,
    )
    @given(strategy)
    def take(render: Render) -> None:
        found.append(render)

    take()
    return found[0]


def new_id() -> str:
    return str(uuid.uuid4())
