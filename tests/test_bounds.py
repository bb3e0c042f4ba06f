"""Every setting and task option has a range, checked where the value enters (settings at
start-up, task options at registration, per-call options when the call is built), with an
error naming it and its range. Floats must be finite: ``inf`` and ``nan`` are refused."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bgcoor_core import (
    OutOfRangeError,
    Settings,
    SettingsError,
    Task,
    TaskManager,
    TaskOptions,
    TaskStatus,
    load_settings,
)
from bgcoor_core import _limits as limits

ROOT = Path(__file__).resolve().parent.parent
INF, NAN = math.inf, math.nan

#: Every bounded setting: its field name and range (from the field itself).
BOUNDED = {
    name: info
    for name, info in Settings.model_fields.items()
    if any(type(m).__name__ == "Ge" for m in info.metadata)
}


def bounds_of(field: str) -> tuple[float, float]:
    info = Settings.model_fields[field]
    low = next(m.ge for m in info.metadata if type(m).__name__ == "Ge")
    high = next(m.le for m in info.metadata if type(m).__name__ == "Le")
    return low, high


#: Settings holding a mapping of numbers, each number checked by the field's validator.
MAPPINGS = {"queue_limits": ('{"q": 0}', '{"q": 1000000001}', '{"q": 1.5}')}


def test_every_number_setting_is_bounded() -> None:
    numeric = {
        name
        for name, info in Settings.model_fields.items()
        if re.search(r"\b(int|float)\b", str(info.annotation)) and name not in MAPPINGS
    }
    assert numeric - set(BOUNDED) == set(), "a number setting without a range"
    assert {"lease_seconds", "poll_seconds", "result_ttl", "timeout"} <= set(BOUNDED)


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, vs in MAPPINGS.items() for v in vs])
def test_numbers_in_mapping_settings_are_bounded(
    field: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"BGCOOR_{field.upper()}", value)
    with pytest.raises(SettingsError, match=f"BGCOOR_{field.upper()}"):
        load_settings()


# -- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lease_seconds", "1e-9"),  # tasks ran 5-6 times in 6 s at 100% CPU
        ("lease_seconds", "inf"),  # PostgreSQL: interval out of range on every reserve
        ("lease_seconds", "1e13"),
        ("result_ttl", "inf"),  # PostgreSQL: a task re-ran every lease
        ("poll_seconds", "1e-9"),  # burned a core while idle
        ("timeout", "inf"),
        ("timeout", "nan"),
        ("heartbeat_seconds", "1e-9"),
        ("cleanup_seconds", "1e-9"),
        ("retry_backoff", "inf"),
        ("retry_backoff_max", "nan"),
        ("shutdown_grace", "inf"),
        ("prefetch", "1000000000"),
        ("max_retries", "1000000000"),
        ("max_payload_bytes", "1000000000000"),
    ],
)
def test_out_of_range_setting_names_the_variable_and_its_range(
    monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    variable = f"BGCOOR_{field.upper()}"
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    low, high = bounds_of(field)
    assert f"{variable}: {value} is out of range: use " in message
    assert Settings.model_fields[field].description in message
    assert f"{low:g}" in message or str(int(low)) in message
    assert str(int(high)) in message or f"{high:g}" in message


@pytest.mark.parametrize("field", sorted(BOUNDED))
def test_each_bound_is_inclusive_and_just_beyond_is_refused(field: str) -> None:
    low, high = bounds_of(field)
    extra: dict[str, Any] = {}
    highest = high
    if field == "heartbeat_seconds":  # must also stay below the lease
        extra, highest = {"lease_seconds": limits.MAX_LEASE}, limits.MAX_LEASE / 2
    for value in (low, highest):
        assert getattr(load_settings(**extra, **{field: value}), field) == value
    is_int = "int" in str(Settings.model_fields[field].annotation)
    if is_int:
        bad: list[Any] = [low - 1, high + 1]
    else:
        bad = [low - 0.001 if low == 0 else low / 2, high * 2, INF, -INF, NAN]
    for value in bad:
        with pytest.raises(SettingsError, match=f"{field}=: .* is out of range: use"):
            load_settings(**extra, **{field: value})


def test_an_optional_setting_says_none_is_allowed_too() -> None:
    with pytest.raises(SettingsError, match=r"result_ttl=: inf .*\(10 years\), or none$"):
        load_settings(result_ttl=INF)
    assert load_settings(result_ttl=None).result_ttl is None


def test_configuration_docs_show_each_range() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    for field, info in BOUNDED.items():
        variable = f"BGCOOR_{field.upper()}"
        rows = [line for line in page.splitlines() if line.startswith(f"| `{variable}` |")]
        assert rows, f"no table row for {variable}"
        if info.description:  # ranges from _limits are shown as the error states them
            assert info.description in rows[0], f"{variable}: docs lack {info.description!r}"


# -- task options at registration -------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", INF),
        ("timeout", NAN),
        ("timeout", 0.0),
        ("timeout", 1e13),
        ("max_retries", -1),
        ("max_retries", 10**9),
        ("priority", 1001),
        ("priority", -1001),
        ("retry_backoff", INF),
        ("retry_backoff", -1.0),
        ("retry_backoff_max", NAN),
    ],
)
def test_out_of_range_task_option_is_refused_at_registration(option: str, value: Any) -> None:
    with pytest.raises(OutOfRangeError, match=f"task option {option}=.* is out of range: use"):
        TaskOptions(**{option: value})
    manager = TaskManager(broker_url="memory://", storage_url="memory://")
    if option != "retry_backoff_max":  # not a decorator argument
        with pytest.raises(OutOfRangeError):

            @manager.task(**{option: value})
            def task() -> None: ...

    assert len(manager.registry) == 0


def test_task_options_at_their_bounds_are_accepted() -> None:
    TaskOptions(timeout=limits.MIN_TIMEOUT, max_retries=limits.MAX_RETRIES, priority=-1000)
    TaskOptions(timeout=limits.MAX_DURATION, priority=1000, retry_backoff=0.0)


def test_out_of_range_errors_are_value_errors_and_configuration_errors() -> None:
    from bgcoor_core import ConfigurationError

    with pytest.raises(ValueError, match="priority=5000"):
        TaskOptions(priority=5000)
    with pytest.raises(ConfigurationError):
        TaskOptions(priority=5000)


# -- per-call options --------------------------------------------------------------------


@pytest.fixture
async def manager() -> AsyncIterator[TaskManager]:
    manager = TaskManager(broker_url="memory://", storage_url="memory://")
    yield manager
    await manager.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("delay", INF),  # raised a raw OverflowError
        ("delay", NAN),
        ("delay", 1e12),
        ("delay", -1.0),
        ("timeout", INF),  # was encoded as null: the default timeout applied instead
        ("timeout", NAN),
        ("timeout", 0.0),
        ("priority", 1001),
        ("max_retries", -1),
        ("max_retries", 10**9),
    ],
)
async def test_out_of_range_call_option_is_refused_before_anything_is_enqueued(
    manager: TaskManager, option: str, value: Any
) -> None:
    @manager.task(name="job")
    def job() -> None: ...

    with pytest.raises(OutOfRangeError, match=f"task 'job': {option}=.* is out of range: use"):
        await job.options(**{option: value}).enqueue()
    with pytest.raises(OutOfRangeError):
        manager.build_task("job", (), {}, **{option: value})
    assert (await manager.broker.stats("default")).ready == 0
    assert (await manager.broker.stats("default")).scheduled == 0


async def test_an_eta_too_far_ahead_is_refused(manager: TaskManager) -> None:
    @manager.task(name="job")
    def job() -> None: ...

    far = datetime.now(UTC) + timedelta(seconds=limits.MAX_DELAY + 3600)
    with pytest.raises(OutOfRangeError, match=r"task 'job': eta=.* is out of range"):
        await job.options(eta=far).enqueue()
    with pytest.raises(OutOfRangeError):
        await job.options(eta=datetime.max.replace(tzinfo=UTC)).enqueue()
    past = datetime.now(UTC) - timedelta(days=1)  # a past eta just runs now
    handle = await job.options(eta=past).enqueue()
    assert (await handle.info()).eta == past


def test_a_task_record_refuses_an_infinite_timeout() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        Task.new("job", timeout=INF)


@pytest.mark.parametrize("scheme", ["memory", "sqlite"])
async def test_the_largest_delay_and_timeout_are_stored_and_read_back(
    scheme: str, tmp_path: Path
) -> None:
    url = "memory://" if scheme == "memory" else f"sqlite:///{tmp_path}/bounds.db"
    manager = TaskManager(broker_url=url, storage_url=url)

    @manager.task(name="job", priority=limits.MAX_PRIORITY)
    def job() -> None: ...

    try:
        handle = await job.options(
            delay=limits.MAX_DELAY, timeout=limits.MAX_DURATION, max_retries=limits.MAX_RETRIES
        ).enqueue()
        record = await handle.info()
        assert record.status is TaskStatus.SCHEDULED
        assert record.timeout == limits.MAX_DURATION
        assert record.max_retries == limits.MAX_RETRIES
        assert record.eta is not None
        ahead = (record.eta - datetime.now(UTC)).total_seconds()
        assert limits.MAX_DELAY - 60 < ahead <= limits.MAX_DELAY
        assert (await manager.broker.stats("default")).scheduled == 1
        assert await manager.broker.reserve(["default"], lease=1.0, timeout=0) == []
    finally:
        await manager.close()


async def test_a_short_lease_within_range_still_works() -> None:
    manager = TaskManager(
        broker_url="memory://", storage_url="memory://", lease_seconds=limits.MIN_LEASE
    )
    calls = 0

    @manager.task(name="job")
    def job() -> int:
        nonlocal calls
        calls += 1
        return 7

    try:
        handle = await job.enqueue()
        assert await manager.drain() == 1
        assert await handle.result(timeout=1) == 7
        assert calls == 1
        await asyncio.sleep(0)
    finally:
        await manager.close()


def test_range_messages_read_well() -> None:
    assert limits.LEASE.describe() == "0.1 to 86400 seconds (1 day)"
    assert limits.DELAY.describe() == "0 to 315360000 seconds (10 years)"
    assert limits.PRIORITY.describe() == "-1000 to 1000"
    assert True not in limits.RETRIES  # a bool is no count
    assert 5 in limits.RETRIES
    assert NAN not in limits.DELAY
