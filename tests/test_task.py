"""The task record: construction, JSON round trip, ids, name validation."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgcoor_core import Codec, DecodeError, InvalidNameError, Task, TaskStatus
from bgcoor_core._ids import new_task_id, uuid7
from bgcoor_core._task import MESSAGE_FORMAT, validate_queue_name, validate_task_name

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)


def typed(value: Any) -> Any:
    """``value`` with every scalar tagged by its type, so ``1 == 1.0 == True`` cannot hide
    a type change in a round trip."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    return (type(value).__name__, value)


def full_task() -> Task:
    """A task with every field set to something other than its default."""
    plus_530 = timezone(timedelta(hours=5, minutes=30))
    minus_7 = timezone(timedelta(hours=-7))
    return Task(
        name="billing.charge_card",
        payload={"args": [1, "two", 3.5, None], "kwargs": {"nested": {"deep": [True, {}]}}},
        status=TaskStatus.DEAD,
        attempts=4,
        max_retries=3,
        queue="billing.eu-1:high",
        priority=-3,
        eta=datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=plus_530),
        timeout=2.5,
        created_at=datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC),
        started_at=datetime(2024, 3, 1, 1, 0, 0, 1, tzinfo=minus_7),
        finished_at=datetime(2024, 3, 1, 9, 0, 0, tzinfo=UTC),
        error='ValueError: naïve ✓ 日本語 "quoted"',
        traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: ✓\n',
        result={"total": 12.75, "items": [{"sku": "A-1", "qty": 2}], "ok": False},
        lease_token="abc123",
    )


def test_new_as_in_the_original_design() -> None:
    before = datetime.now(UTC)
    task = Task.new("my_task", {"to": "world"}, 3)
    assert task.name == "my_task"
    assert task.payload == {"to": "world"}
    assert task.max_retries == 3
    assert task.status is TaskStatus.PENDING
    assert task.attempts == 0
    assert task.queue == "default"
    assert task.priority == 0
    assert task.eta is None
    assert task.result is None
    assert task.error is None
    assert task.created_at.tzinfo is not None
    assert before <= task.created_at <= datetime.now(UTC)


def test_new_accepts_extra_fields_and_agrees_with_the_constructor() -> None:
    via_new = Task.new("report", [1, 2], 5, queue="reports", priority=7)
    via_init = Task(name="report", payload=[1, 2], max_retries=5, queue="reports", priority=7)
    skip = {"id", "created_at"}
    assert via_new.model_dump(exclude=skip) == via_init.model_dump(exclude=skip)
    assert via_new.id != via_init.id


def test_json_round_trip_is_lossless() -> None:
    task = full_task()
    restored = Task.from_json(task.to_json())
    assert restored == task
    assert restored.model_dump() == task.model_dump()
    # Offsets survive, not just the instant.
    assert restored.eta is not None
    assert task.eta is not None
    assert restored.eta.utcoffset() == timedelta(hours=5, minutes=30)
    assert restored.started_at is not None
    assert restored.started_at.utcoffset() == timedelta(hours=-7)
    assert restored.created_at.microsecond == 999999
    assert restored.status is TaskStatus.DEAD
    assert typed(restored.payload) == typed(task.payload)
    assert typed(restored.result) == typed(task.result)
    # bytes in, same task out
    assert Task.from_json(task.to_json().encode()) == task


def test_json_of_a_fresh_task_round_trips() -> None:
    task = Task.new("t")
    assert Task.from_json(task.to_json()) == task


@settings(max_examples=60, deadline=None)
@given(payload=JSON_VALUES, result=JSON_VALUES)
def test_any_json_payload_and_result_round_trip(payload: Any, result: Any) -> None:
    task = Task.new("t", payload, 1, result=result)
    restored = Task.from_json(task.to_json())
    assert typed(restored.payload) == typed(payload)
    assert typed(restored.result) == typed(result)


def test_fields_from_a_newer_producer_are_kept_not_refused() -> None:
    """A rolling deploy: a newer producer's extra field must not dead-letter the task on
    an older worker, and survives its re-encoding (a retry, a record write)."""
    data = Task.new("t", headers={"tenant": "t-42"}).model_dump(mode="json")
    data["surprise"] = {"added": "later"}
    codec = Codec.json()
    task = codec.decode(b"application/json\n" + json.dumps(data).encode())
    assert task.headers == {"tenant": "t-42"}
    again = codec.decode(codec.encode(task))
    assert again.model_extra == {"surprise": {"added": "later"}}


def test_a_message_of_a_newer_format_is_refused_with_the_reason() -> None:
    data = Task.new("t").model_dump(mode="json")
    data["format"] = MESSAGE_FORMAT + 1
    with pytest.raises(DecodeError, match="newer than this worker"):
        Codec.json().decode(b"application/json\n" + json.dumps(data).encode())


@pytest.mark.parametrize(
    ("field", "value"),
    [("attempts", -1), ("max_retries", -1), ("timeout", 0), ("timeout", -2.0)],
)
def test_out_of_range_numbers_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        Task.model_validate({"name": "t", field: value})


# -- ids -------------------------------------------------------------------------------


def test_ids_made_fast_are_unique_and_sorted() -> None:
    ids = [Task.new("t").id for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_ids_are_uuid7_carrying_the_creation_time() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = uuid7()
    after_ms = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before_ms <= value.int >> 80 <= after_ms
    text = Task.new("t").id
    assert str(uuid.UUID(text)) == text  # canonical string form
    assert uuid.UUID(text).version == 7


def test_ids_sort_by_time_across_milliseconds() -> None:
    ids = []
    for _ in range(5):
        ids.append(new_task_id())
        time.sleep(0.002)
    assert ids == sorted(ids)
    stamps = [uuid.UUID(i).int >> 80 for i in ids]
    assert stamps == sorted(stamps)
    assert stamps[-1] - stamps[0] >= 8


def test_ids_from_many_threads_are_unique_and_sorted_per_thread() -> None:
    per_thread: dict[int, list[str]] = {}
    start = threading.Barrier(8)

    def make(n: int) -> None:
        start.wait()
        per_thread[n] = [new_task_id() for _ in range(1000)]

    threads = [threading.Thread(target=make, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [i for ids in per_thread.values() for i in ids]
    assert len(everything) == 8000
    assert len(set(everything)) == 8000
    for ids in per_thread.values():
        assert ids == sorted(ids)


# -- names -----------------------------------------------------------------------------

BAD_TASK_NAMES = ["", "1abc", "has space", "a/b", "x" * 201, "é", "tab\t", "new\nline"]
GOOD_TASK_NAMES = ["a", "_private", "billing.charge_card", "ns:task-1", "x" * 200]
BAD_QUEUES = ["", "a b", "-x", "_x", ".x", "q/1", "x" * 65, "ü", "q\n"]
GOOD_QUEUES = ["default", "0", "a:b-c_d.e", "x" * 64, "Q9"]


@pytest.mark.parametrize("name", BAD_TASK_NAMES)
def test_invalid_task_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid task name"):
        Task(name=name)
    with pytest.raises(ValueError, match="invalid task name"):
        Task.new(name)
    with pytest.raises(InvalidNameError):
        validate_task_name(name)


@pytest.mark.parametrize("name", GOOD_TASK_NAMES)
def test_valid_task_names_are_accepted(name: str) -> None:
    assert Task.new(name).name == name


@pytest.mark.parametrize("queue", BAD_QUEUES)
def test_invalid_queue_names_are_rejected(queue: str) -> None:
    with pytest.raises(ValueError, match="invalid queue name"):
        Task(name="t", queue=queue)
    with pytest.raises(InvalidNameError):
        validate_queue_name(queue)


@pytest.mark.parametrize("queue", GOOD_QUEUES)
def test_valid_queue_names_are_accepted(queue: str) -> None:
    assert Task(name="t", queue=queue).queue == queue


def test_non_string_names_are_rejected() -> None:
    with pytest.raises(InvalidNameError):
        validate_task_name(42)
    with pytest.raises(InvalidNameError):
        validate_queue_name(None)


def test_final_statuses() -> None:
    final = {s for s in TaskStatus if s.is_final}
    assert final == {
        TaskStatus.SUCCEEDED,
        TaskStatus.FAILED,
        TaskStatus.DEAD,
        TaskStatus.CANCELLED,
        TaskStatus.EXPIRED,
    }


# -- ids -------------------------------------------------------------------------------

BAD_TASK_IDS = [
    "",
    "a b",
    "nul\x00byte",
    "tab\t",
    "new\nline",
    "cr\r",
    "esc\x1b[31m",
    "\u202e",
    "x" * 201,
]
GOOD_TASK_IDS = ["a", "order-42", "tâche:1/é", "x" * 200, "01a2-b3c4", "{braces}[ok]"]


@pytest.mark.parametrize("task_id", BAD_TASK_IDS)
def test_invalid_task_ids_are_rejected(task_id: str) -> None:
    from bgcoor_core._task import validate_task_id

    with pytest.raises(ValueError, match="invalid task id"):
        Task(id=task_id, name="t")
    with pytest.raises(InvalidNameError, match="use 1-200 printable characters"):
        validate_task_id(task_id)


@pytest.mark.parametrize("task_id", GOOD_TASK_IDS)
def test_valid_task_ids_are_accepted(task_id: str) -> None:
    assert Task(id=task_id, name="t").id == task_id


def test_generated_ids_are_valid() -> None:
    from bgcoor_core._task import validate_task_id

    for _ in range(1000):
        assert validate_task_id(new_task_id())


def test_a_message_with_a_bad_id_is_undecodable() -> None:
    data = Task.new("t").model_dump(mode="json")
    data["id"] = "a\x00b"
    with pytest.raises(DecodeError, match=r"id: .*invalid task id 'a\\x00b'"):
        Codec.json().decode(b"application/json\n" + json.dumps(data).encode())


def test_non_string_ids_are_rejected() -> None:
    from bgcoor_core._task import validate_task_id

    with pytest.raises(InvalidNameError):
        validate_task_id(42)


def test_a_prechecked_task_is_the_one_validation_would_build() -> None:
    fields: dict[str, Any] = {
        "name": "t",
        "payload": {"args": [1, "x"], "kwargs": {"k": [2]}},
        "queue": "q",
        "priority": 2,
        "max_retries": 5,
        "timeout": 1.5,
        "headers": {"h": "v"},
        "eta": datetime(2030, 1, 1, tzinfo=UTC),
        "status": TaskStatus.SCHEDULED,
    }
    fast, slow = Task.prechecked(**fields), Task(**fields)
    new = {"id", "created_at"}
    assert fast.model_dump(exclude=new) == slow.model_dump(exclude=new)
    assert fast.model_fields_set == slow.model_fields_set
    assert Task.from_json(fast.to_json()) == fast
    assert fast.id != slow.id
    assert fast.created_at.tzinfo is not None
    # Defaults are fresh per task: one task's headers are not another's.
    a, b = Task.prechecked(name="t"), Task.prechecked(name="t")
    a.headers["x"] = "1"
    assert b.headers == {}
    assert a.id != b.id
    assert a.status is TaskStatus.PENDING
