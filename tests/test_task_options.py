"""Task options are declared once (``bgcoor_core._options``) and read by the decorator,
``.options()``, ``TaskOptions`` and plugins (issue 11, defect 6)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bgcoor_core import OptionRegistry, OutOfRangeError, TaskManager, TaskOptions, hookimpl
from bgcoor_core._errors import TaskRegistrationError
from bgcoor_core._options import options


def test_task_options_holds_exactly_the_declared_defaults() -> None:
    held = {f.name for f in dataclasses.fields(TaskOptions)}
    assert held == (set(options("task")) - {"name"})


def test_retry_backoff_max_can_be_set_from_the_decorator(fast: dict[str, Any]) -> None:
    manager = TaskManager(**fast)

    @manager.task(retry_backoff=0.5, retry_backoff_max=2.0, result_ttl=60.0)
    def job() -> None: ...

    assert job.entry.options.retry_backoff_max == 2.0
    assert job.entry.options.result_ttl == 60.0


def test_an_unknown_decorator_option_names_the_closest_one(fast: dict[str, Any]) -> None:
    manager = TaskManager(**fast)
    with pytest.raises(TaskRegistrationError, match=r"unknown option 'max_retry'.*'max_retries'"):

        @manager.task(max_retry=3)  # type: ignore[call-overload]
        def job() -> None: ...


async def test_call_options_reach_the_task(fast: dict[str, Any]) -> None:
    manager = TaskManager(**fast)

    @manager.task(name="jobs.report", headers={"team": "data"})
    def report() -> None: ...

    before = datetime.now(UTC)
    handle = await report.options(
        headers={"tenant": "t-42"}, result_ttl=30.0, expires=60.0, priority=2
    ).enqueue()
    task = await manager.get(handle.id)
    assert task.headers == {"team": "data", "tenant": "t-42"}
    assert task.result_ttl == 30.0
    assert task.priority == 2
    assert task.expires is not None
    assert (
        before + timedelta(seconds=59) <= task.expires <= datetime.now(UTC) + timedelta(seconds=61)
    )
    await manager.close()


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"dealy": 1}, "unknown option 'dealy'; did you mean 'delay'"),
        ({"delay": float("nan")}, "delay=nan is out of range"),
        ({"expires": -1}, "expires=-1.0 is out of range"),
        ({"headers": {"a": "\x1b[31m"}}, "printable"),
        ({"priority": "high"}, "priority: Input should be a valid integer"),
    ],
)
def test_bad_call_options_are_refused_at_once(
    fast: dict[str, Any], given: dict[str, Any], problem: str
) -> None:
    manager = TaskManager(**fast)

    @manager.task(name="jobs.x")
    def x() -> None: ...

    with pytest.raises(OutOfRangeError, match=problem.replace("(", r"\(").replace("[", r"\[")):
        x.options(**given)


class Tenants:
    @hookimpl
    def bgcoor_register_task_options(self, options: OptionRegistry) -> None:
        options.add("tenant", str | None, default=None, help="e.g. acme")


def test_plugins_declare_task_options_validated_like_the_cores(fast: dict[str, Any]) -> None:
    manager = TaskManager(plugins=[Tenants()], **fast)

    @manager.task(tenant="acme")  # type: ignore[call-overload]
    def limited() -> None: ...

    @manager.task(extra={"tenant": "initech"})
    def typed() -> None: ...

    assert limited.entry.options.extra == {"tenant": "acme"}
    assert typed.entry.options.extra == {"tenant": "initech"}
    with pytest.raises(TaskRegistrationError, match=r"option 'tenant' .*Tenants"):

        @manager.task(tenant=10)  # type: ignore[call-overload]
        def wrong() -> None: ...

    with pytest.raises(TaskRegistrationError, match=r"unknown option 'tenat'.*'tenant'"):

        @manager.task(tenat="acme")  # type: ignore[call-overload]
        def typo() -> None: ...


def test_an_unknown_keyword_argument_is_named(fast: dict[str, Any]) -> None:
    manager = TaskManager(**fast)

    @manager.task(name="jobs.crunch")
    def crunch(n: int) -> int:
        return n

    with pytest.raises(Exception, match=r"unexpected keyword argument 'm'; its parameters are n"):
        crunch.build((), {"m": 1})


# -- unique keys ----------------------------------------------------------------------


async def test_a_unique_key_deduplicates_an_enqueue_to_its_holder() -> None:
    manager = TaskManager(broker_url="memory://", storage_url="memory://")

    @manager.task(name="unique.invoice")
    async def send_invoice(order: int) -> int:
        return order

    first = await send_invoice.options(unique_key="invoice-1").enqueue(1)
    again = await send_invoice.options(unique_key="invoice-1").enqueue(1)
    other = await send_invoice.options(unique_key="invoice-2").enqueue(2)
    assert (first.deduplicated, again.deduplicated, other.deduplicated) == (False, True, False)
    assert again.id == first.id
    async with manager.worker(2):
        assert await again.result(timeout=5) == 1
        fresh = await send_invoice.options(unique_key="invoice-1").enqueue(1)  # free again
        assert not fresh.deduplicated
        assert await fresh.result(timeout=5) == 1
        held = send_invoice.options(unique_key="invoice-3", unique_for=timedelta(hours=1))
        window = await held.enqueue(3)
        assert await window.result(timeout=5) == 3
        assert (await held.enqueue(3)).id == window.id  # its window holds it past its end
    await manager.close()


def test_unique_options_are_checked() -> None:
    manager = TaskManager(broker_url="memory://", storage_url="memory://")

    @manager.task(name="unique.checked")
    async def job() -> None: ...

    with pytest.raises(OutOfRangeError, match="unique_key: a unique key is 1 to 256"):
        job.options(unique_key="")
    with pytest.raises(OutOfRangeError, match="unique_for"):
        job.options(unique_key="k", unique_for=-1)
    with pytest.raises(OutOfRangeError, match="unique_for needs a unique_key"):
        manager.build_task(job.entry, (), {}, unique_for=60)
