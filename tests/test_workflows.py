"""Workflows end to end through a ``TaskManager`` and its worker, on every backend a
plugin registers with a ``test_url`` (memory, SQLite, Redis, PostgreSQL, and any new one
without edits): results, nesting, the failure policies, a requeue from the dead letters,
cancellation, and the guarantees of the store's step (a member counted once, results kept
while the workflow runs). The store's step alone is ``WorkflowContract``'s (conformance)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bgcoor_core import (
    CapabilityError,
    InvalidWorkflowError,
    TaskCancelledError,
    TaskManager,
    TaskStatus,
    Workflow,
    WorkflowFailedError,
    WorkflowStatus,
    build_plugin_host,
    chain,
    chord,
    group,
)
from bgcoor_core._workflows import WORKFLOW_HEADER

HOST = build_plugin_host()
SCHEMES = sorted(s for s, e in HOST.brokers.entries.items() if e.test_url is not None)


@pytest.fixture(params=SCHEMES, ids=str)
async def manager(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskManager]:
    test_url = HOST.brokers.entries[request.param].test_url
    assert test_url is not None
    url = test_url(tmp_path)
    manager = TaskManager(broker_url=url, storage_url=url, result_ttl=60.0)
    yield manager
    await manager.close()


@pytest.fixture
def tasks(manager: TaskManager) -> Any:
    class Tasks:
        runs: list[str] = []

        @staticmethod
        @manager.task(name="wf.add")
        async def add(a: int, b: int = 0) -> int:
            Tasks.runs.append("add")
            return a + b

        @staticmethod
        @manager.task(name="wf.total")
        async def total(values: list[Any]) -> int:
            return sum(v if isinstance(v, int) else 0 for v in _flat(values))

        @staticmethod
        @manager.task(name="wf.pair")
        async def pair(first: Any, second: Any) -> list[Any]:
            return [first, second]

        @staticmethod
        @manager.task(name="wf.boom", max_retries=0)
        async def boom(x: int) -> int:
            raise ValueError(f"boom {x}")

        @staticmethod
        @manager.task(name="wf.flaky", max_retries=0)
        async def flaky(x: int) -> int:
            Tasks.runs.append("flaky")
            if Tasks.runs.count("flaky") == 1:
                raise ValueError("first time")
            return x

        @staticmethod
        @manager.task(name="wf.alert")
        async def alert(failure: dict[str, Any]) -> str:
            Tasks.runs.append("alert")
            return str(failure["bgcoor_failed"]["error"])

        @staticmethod
        @manager.task(name="wf.slow")
        async def slow(seconds: float) -> float:
            Tasks.runs.append("slow")
            await asyncio.sleep(seconds)
            return seconds

        @staticmethod
        @manager.task(name="wf.say")
        async def say(word: str) -> str:
            Tasks.runs.append(word)
            return word

    Tasks.runs = []
    return Tasks


def _flat(values: Any) -> list[Any]:
    if isinstance(values, list):
        return [v for part in values for v in _flat(part)]
    return [values]


# -- results ---------------------------------------------------------------------------


async def test_a_chain_feeds_each_result_to_the_next(manager: TaskManager, tasks: Any) -> None:
    async with manager.worker(4):
        handle = await chain(tasks.add.s(1, 2), tasks.add.s(10), tasks.add.s(100)).enqueue()
        assert await handle.result(timeout=5) == 113
        assert await handle.status() == "succeeded"


async def test_a_group_gives_results_in_submission_order(manager: TaskManager, tasks: Any) -> None:
    async with manager.worker(8):
        handle = await group(tasks.add.s(i, i) for i in range(20)).enqueue()
        assert await handle.result(timeout=5) == [2 * i for i in range(20)]


async def test_a_chord_calls_back_once_with_every_result(manager: TaskManager, tasks: Any) -> None:
    async with manager.worker(8):
        header = group(tasks.add.s(i) for i in range(50))
        handle = await chord(header, tasks.total.s()).enqueue()
        assert await handle.result(timeout=10) == sum(range(50))


async def test_a_chord_with_an_empty_header_calls_back_with_nothing(
    manager: TaskManager, tasks: Any
) -> None:
    async with manager.worker(2):
        handle = await chord(group(), tasks.total.s()).enqueue()
        assert await handle.result(timeout=5) == 0


async def test_compositions_nest(manager: TaskManager, tasks: Any) -> None:
    """A chain holding a group of a chain and a task, then a chord whose header holds a
    chord: each stage gets the previous stage's result (a group's: its list)."""
    inner = chord(group(tasks.total.s(), tasks.total.s()), tasks.total.s())  # 1114 * 2
    flow = chain(
        tasks.add.s(1, 1),  # 2
        group(chain(tasks.add.s(10), tasks.add.s(100)), tasks.add.s(1000)),  # [112, 1002]
        chord(group(inner, tasks.total.s()), tasks.total.s()),  # 2228 + 1114
    )
    async with manager.worker(8):
        handle = await flow.enqueue()
        assert await handle.result(timeout=10) == 2228 + 1114


async def test_a_dag_passes_parents_results_in_the_order_of_after(
    manager: TaskManager, tasks: Any
) -> None:
    wf = Workflow()
    a = wf.add(tasks.add.s(1))
    b = wf.add(tasks.add.s(2))
    wf.add(tasks.pair.s(), after=[b, a])
    async with manager.worker(4):
        assert await (await wf.enqueue()).result(timeout=5) == [2, 1]


async def test_an_immutable_signature_waits_but_takes_no_result(
    manager: TaskManager, tasks: Any
) -> None:
    async with manager.worker(2):
        handle = await chain(tasks.slow.s(0.05), tasks.say.si("after")).enqueue()
        assert await handle.result(timeout=5) == "after"
    assert tasks.runs == ["slow", "after"]


async def test_a_thousand_node_dag_of_fan_out_and_fan_in_layers(
    manager: TaskManager, tasks: Any
) -> None:
    wf = Workflow()
    layer = [wf.add(tasks.add.s(i)) for i in range(10)]
    for _ in range(9):  # 10 layers of 100, each node after two of the previous layer
        width = len(layer)
        layer = [
            wf.add(tasks.pair.s(), after=[layer[i % width], layer[(i + 1) % width]])
            for i in range(100)
        ]
    async with manager.worker(50):
        handle = await wf.enqueue()
        result = await handle.result(timeout=60)
    state = await handle.state()
    assert len(state.graph.nodes) == 910
    assert all(done is TaskStatus.SUCCEEDED for done in state.done)
    assert len(result) == 100  # the last layer: the workflow's sinks


# -- failures --------------------------------------------------------------------------


async def test_a_failing_member_fails_the_workflow_and_runs_its_errback_once(
    manager: TaskManager, tasks: Any
) -> None:
    wf = Workflow(on_failure="fail")
    bad = wf.add(tasks.boom.s(7), on_error=tasks.alert.s())
    wf.add(tasks.say.s(), after=[bad])
    slow = wf.add(tasks.slow.s(0.3))
    wf.add(tasks.say.si("never"), after=[slow])
    async with manager.worker(4):
        handle = await wf.enqueue()
        started = time.monotonic()
        with pytest.raises(
            WorkflowFailedError, match=r"node 0 \(wf.boom\) dead: ValueError: boom 7"
        ):
            await handle.result(timeout=5)
        assert time.monotonic() - started < 1.5
        await asyncio.sleep(0.3)
    state = await handle.state()
    assert state.status is WorkflowStatus.FAILED
    assert tasks.runs.count("alert") == 1
    assert "never" not in tasks.runs  # waiting members are cancelled, even in other branches
    errback = await manager.storage.get(state.tasks[1])
    assert errback is not None
    assert errback.result == "ValueError: boom 7"
    dependents = [await manager.storage.get(state.tasks[k]) for k in (2, 4)]
    assert [d.status for d in dependents if d is not None] == [TaskStatus.CANCELLED] * 2


async def test_a_chord_with_a_failing_member_never_calls_back(
    manager: TaskManager, tasks: Any
) -> None:
    async with manager.worker(8):
        header = group([*(tasks.add.s(i) for i in range(5)), tasks.boom.s(1)])
        handle = await chord(header, tasks.total.s()).enqueue()
        with pytest.raises(WorkflowFailedError, match=r"wf\.boom"):
            await handle.result(timeout=5)
    state = await handle.state()
    callback = await manager.storage.get(state.tasks[-1])
    assert callback is not None
    assert callback.status is TaskStatus.CANCELLED


async def test_continue_gives_dependents_a_failure_marker(manager: TaskManager, tasks: Any) -> None:
    wf = Workflow(on_failure="continue")
    bad = wf.add(tasks.boom.s(3))
    good = wf.add(tasks.add.s(4))
    wf.add(tasks.pair.s(), after=[good, bad])
    async with manager.worker(4):
        first, marker = await (await wf.enqueue()).result(timeout=5)
    assert first == 4
    assert marker["bgcoor_failed"]["task"] == "wf.boom"
    assert marker["bgcoor_failed"]["status"] == "dead"
    assert marker["bgcoor_failed"]["error"] == "ValueError: boom 3"


async def test_a_dead_member_requeued_from_the_dead_letters_finishes_its_workflow(
    manager: TaskManager, tasks: Any
) -> None:
    flow = chord(group([tasks.flaky.s(5), tasks.add.s(1)]), tasks.total.s())
    async with manager.worker(4):
        handle = await flow.enqueue()
        with pytest.raises(WorkflowFailedError, match=r"wf\.flaky\) dead"):
            await handle.result(timeout=5)
        state = await handle.state()
        callback = await manager.storage.get(state.tasks[-1])
        assert callback is not None
        assert callback.status is TaskStatus.CANCELLED
        assert await manager.requeue_dead("default") == [state.tasks[0]]
        assert await handle.result(timeout=5) == 6  # the callback ran, with both results
    assert await handle.status() == "succeeded"
    assert tasks.runs.count("flaky") == 2


# -- cancelling ------------------------------------------------------------------------


async def test_after_cancel_returns_no_member_starts(manager: TaskManager, tasks: Any) -> None:
    flow = chain(tasks.slow.s(0.3), tasks.say.si("second"), tasks.say.si("third"))
    async with manager.worker(4):
        handle = await flow.enqueue()
        while "slow" not in tasks.runs:  # noqa: ASYNC110 - the ledger is a plain list
            await asyncio.sleep(0.01)
        assert await handle.cancel() is True
        assert await handle.cancel() is False  # ended already
        with pytest.raises(TaskCancelledError):
            await handle.result(timeout=5)
        await asyncio.sleep(0.5)
    assert tasks.runs == ["slow"]
    assert await handle.status() == "cancelled"


# -- the store's guarantees ------------------------------------------------------------


async def test_a_member_counted_twice_releases_its_dependents_once(
    manager: TaskManager, tasks: Any
) -> None:
    """A redelivered member whose outcome is stored again (the worker died after storing
    it) must not count twice: the second final write is refused, and counting is keyed
    by member."""
    wf = Workflow()
    a = wf.add(tasks.add.s(1))
    b = wf.add(tasks.add.s(2))
    wf.add(tasks.pair.s(), after=[a, b])
    async with manager.worker(4):
        handle = await wf.enqueue()
        await handle.result(timeout=5)
    state = await handle.state()
    record = await manager.storage.get(state.tasks[0])
    assert record is not None
    store = manager.backends.workflows
    assert store is not None
    with pytest.raises(Exception, match="succeeded"):
        await store.save_member(record)  # a final record cannot be written again
    assert (await handle.state()).remaining == state.remaining


async def test_results_are_kept_until_the_workflow_ends(manager: TaskManager, tasks: Any) -> None:
    """A member's result TTL starts when its workflow ends, not when it finished."""
    flow = chain(tasks.add.options(result_ttl=1).s(1), tasks.slow.si(1.5))
    async with manager.worker(2):
        handle = await flow.enqueue()
        state = await handle.state()
        await asyncio.sleep(1.3)  # the first finished over its 1 s TTL ago
        first = await manager.storage.get(state.tasks[0])
        assert first is not None
        assert first.result == 1
        await handle.result(timeout=5)
    await asyncio.sleep(1.2)
    assert await manager.storage.get(state.tasks[0]) is None  # now it expires


async def test_members_carry_their_workflow_in_their_record(
    manager: TaskManager, tasks: Any
) -> None:
    handle = await chain(tasks.add.s(1), tasks.add.s()).enqueue()
    state = await handle.state()
    first, second = [await manager.storage.get(t) for t in state.tasks]
    assert first is not None
    assert second is not None
    assert first.headers[WORKFLOW_HEADER] == handle.id
    assert (first.status, second.status) == (TaskStatus.PENDING, TaskStatus.WAITING)
    assert await handle.status() == "pending"


# -- refused at submission -------------------------------------------------------------


async def test_unknown_tasks_and_incomplete_arguments_are_refused_at_submission(
    manager: TaskManager, tasks: Any
) -> None:
    from bgcoor_core import Signature

    with pytest.raises(InvalidWorkflowError, match=r"node 1 \(wf.nope\)"):
        await chain(tasks.add.s(1), Signature("wf.nope", None)).enqueue()
    with pytest.raises(InvalidWorkflowError, match="missing a required argument: 'a'"):
        await group(tasks.add.s()).enqueue()  # nothing would give it its first argument
    with pytest.raises(InvalidWorkflowError, match="too many positional arguments"):
        await chain(tasks.add.s(1), tasks.add.s(2, 3)).enqueue()
    assert await manager.storage.list() == []  # nothing was stored


async def test_backends_that_cannot_step_workflows_refuse_them(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"  # records apart from the messages
    manager = TaskManager(broker_url="memory://", storage_url=url)

    @manager.task(name="wf.one")
    async def one() -> int:
        return 1

    with pytest.raises(CapabilityError, match="cannot run workflows"):
        await chain(one.s(), one.si()).enqueue()
    await manager.close()


async def test_a_unique_key_on_a_member_is_refused(manager: TaskManager, tasks: Any) -> None:
    keyed = tasks.add.options(unique_key="k").s(1)
    with pytest.raises(InvalidWorkflowError, match="unique_key cannot be used on a workflow"):
        await chain(keyed, tasks.add.s(2)).enqueue()
    assert await manager.storage.list() == []
