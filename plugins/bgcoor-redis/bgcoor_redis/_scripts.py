"""The Lua scripts. Each file in ``lua/`` runs after ``lua/common.lua`` as one atomic step.

Only the functions of ``common.lua`` that a script uses (directly or through another) are
prepended to it: Redis runs a script's whole text on every call, and defining a function
costs time even when nothing calls it.

The status rules are not copied into Lua by hand: the transition table is generated from
:data:`bgcoor_core.ALLOWED_TRANSITIONS` and :data:`bgcoor_core.FROM_UNKNOWN_STATUS`, and the
statuses that count for a schedule's overlap from :data:`bgcoor_core.kit.SCHEDULE_ACTIVE`
and :data:`~bgcoor_core.kit.SCHEDULE_WAITING`, when the scripts are first loaded.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from bgcoor_core import ALLOWED_TRANSITIONS, FROM_UNKNOWN_STATUS, TaskStatus, WorkflowStatus, kit

#: Priorities a message may have. A ready score is ``(MAX_PRIORITY - priority) * SPAN + seq``
#: and must stay an exact integer in a double: 2,001 levels times 2**42 sequence numbers
#: (4.4 trillion pushes per prefix) fit below 2**53.
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000
SPAN = 2**42
assert (MAX_PRIORITY - MIN_PRIORITY + 1) * SPAN <= 2**53

NAMES = (
    "ack",
    "complete",
    "counts",
    "dead_letter",
    "dead_letters",
    "delete_expired",
    "delete_schedule",
    "enqueue",
    "enqueue_unique",
    "extend",
    "final",
    "fire",
    "get_schedules",
    "list",
    "nack",
    "pause_schedule",
    "purge",
    "purge_dead",
    "put_schedules",
    "release",
    "repair_wake",
    "requeue_dead",
    "reserve",
    "save",
    "stats",
    "wf_cancel",
    "wf_complete",
    "wf_get",
    "wf_reopen",
    "wf_save",
    "wf_submit",
)
#: A member's final statuses that fail its workflow (as :func:`bgcoor_core.kit.reopen`
#: counts them): a requeued dead member reopens its workflow only if no other has one.
WORKFLOW_FAILURES = frozenset(
    {TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED, TaskStatus.EXPIRED}
)
#: Scripts that also get the functions of ``lua/workflow.lua`` they use.
WORKFLOW_NAMES = frozenset(name for name in NAMES if name.startswith("wf_"))


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: bytes
    sha: str


#: Stands for any stored status that is not a :class:`~bgcoor_core.TaskStatus` in the
#: transition table (``lua/common.lua`` looks such a status up as this).
UNKNOWN = "?"


def allowed_pairs() -> str:
    """Every allowed status change as ``" old>new "``, looked up with ``string.find``; an
    unknown old status is ``?`` (:data:`~bgcoor_core.FROM_UNKNOWN_STATUS`)."""
    pairs = [f"{old}>{new}" for old, news in ALLOWED_TRANSITIONS.items() for new in news]
    pairs += [f"{UNKNOWN}>{new}" for new in FROM_UNKNOWN_STATUS]
    return " " + " ".join(sorted(pairs)) + " "


def all_statuses() -> str:
    return " " + " ".join(sorted(s.value for s in TaskStatus)) + " "


def final_statuses() -> str:
    return " " + " ".join(sorted(s.value for s in TaskStatus if s.is_final)) + " "


def status_set(statuses: frozenset[TaskStatus]) -> str:
    """``" a b c "``: a set of statuses for ``string.find`` (``lua/fire.lua``)."""
    return " " + " ".join(sorted(s.value for s in statuses)) + " "


def _script_values() -> dict[str, str]:
    """Placeholders of the scripts and of ``lua/workflow.lua`` (``common.lua``'s are in
    ``common_source``)."""
    on_failure = type(_GRAPH.model_fields["on_failure"].default)
    return {
        "@SCHEDULE_ACTIVE@": status_set(kit.SCHEDULE_ACTIVE),
        "@SCHEDULE_WAITING@": status_set(kit.SCHEDULE_WAITING),
        "@SUCCEEDED@": TaskStatus.SUCCEEDED.value,
        "@CANCELLED@": TaskStatus.CANCELLED.value,
        "@PENDING@": TaskStatus.PENDING.value,
        "@WAITING@": TaskStatus.WAITING.value,
        "@FAILURES@": status_set(WORKFLOW_FAILURES),
        "@WF_RUNNING@": WorkflowStatus.RUNNING.value,
        "@WF_SUCCEEDED@": WorkflowStatus.SUCCEEDED.value,
        "@WF_FAILED@": WorkflowStatus.FAILED.value,
        "@WF_CANCELLED@": WorkflowStatus.CANCELLED.value,
        "@WF_STATUSES@": " ".join(sorted(s.value for s in WorkflowStatus)),
        "@FAIL@": on_failure("fail").value,
        "@CONTINUE@": on_failure("continue").value,
    }


#: The workflow graph's model (not exported by the core; reached through the kit's state).
_GRAPH: Any = kit.WorkflowState.model_fields["graph"].annotation


def _read(name: str) -> str:
    return files(__package__).joinpath(f"lua/{name}.lua").read_text("utf-8")


def common_source() -> str:
    text = _read("common")
    values = {
        "@MIN_PRIORITY@": str(MIN_PRIORITY),
        "@MAX_PRIORITY@": str(MAX_PRIORITY),
        "@SPAN@": str(SPAN),
        "@ALLOWED@": allowed_pairs(),
        "@FINAL@": final_statuses(),
        "@STATUSES@": all_statuses(),
    }
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


_FUNCTION = re.compile(r"local function (\w+)\(")


def _functions(common: str) -> tuple[str, dict[str, str]]:
    """``common.lua`` as its head (constants, always kept) and its top-level functions by
    name, each with the comment lines above it, in their order."""
    head, blocks = "", dict[str, str]()
    pending: list[str] = []
    name = None
    for line in common.splitlines(keepends=True):
        pending.append(line)
        started = _FUNCTION.match(line)
        if name is None and started:
            name = started[1]
            if not line.rstrip().endswith(" end"):
                continue  # a multi-line function: it ends at an "end" in the first column
        elif name is None:
            if line.strip() and not line.startswith("--") and blocks:
                raise ValueError(f"common.lua: top-level code after the functions: {line!r}")
            if not blocks:
                head, pending = head + line, []
            continue
        elif line.rstrip() != "end":
            continue
        blocks[name] = "".join(pending)
        pending, name = [], None
    return head, blocks


def _words(lua: str) -> set[str]:
    """The names in Lua code, outside its strings and comments."""
    code = re.sub(r"--[^\n]*", "", re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', lua))
    return set(re.findall(r"\w+", code))


def _needed(body: str, blocks: dict[str, str]) -> list[str]:
    """The functions ``body`` calls, and the ones they call, in ``common.lua``'s order."""
    needed: set[str] = set()
    frontier = _words(body) & blocks.keys()
    while frontier:
        needed |= frontier
        found = set().union(*(_words(blocks[f]) for f in frontier))
        frontier = (found & blocks.keys()) - needed
    return [name for name in blocks if name in needed]


def _filled(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def _workflow_functions(values: dict[str, str]) -> dict[str, str]:
    """The functions of ``lua/workflow.lua`` (which holds only functions and comments)."""
    head, blocks = _functions(_filled(_read("workflow"), values))
    if any(line.strip() and not line.startswith("--") for line in head.splitlines()):
        raise ValueError("workflow.lua: code before its functions")
    return blocks


@functools.cache
def scripts() -> dict[str, Script]:
    """Every script by name, with the SHA1 that ``EVALSHA`` calls it by."""
    head, blocks = _functions(common_source())
    values = _script_values()
    # after common's, which they call: a script lists what it needs in this order
    with_workflows = blocks | _workflow_functions(values)
    loaded = {}
    for name in NAMES:
        body = _filled(_read(name), values)
        library = with_workflows if name in WORKFLOW_NAMES else blocks
        used = "".join(library[f] for f in _needed(body, library))
        source = f"{head}{used}\n-- {name}.lua\n{body}".encode()
        loaded[name] = Script(name, source, hashlib.sha1(source).hexdigest())
    return loaded
