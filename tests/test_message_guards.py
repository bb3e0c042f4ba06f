"""Messages and the payload limit: bodies a worker must refuse even though they parse
(they name another message, or exceed ``max_payload_bytes``), and retries and dead letters
that must still fit after a failure. Found by the reliability suite (``tests/reliability``),
pinned here on the memory backend so the fast suite keeps them."""

from __future__ import annotations

import pytest

from bgcoor_core import (
    Codec,
    DecodeError,
    Executor,
    MemoryBroker,
    MemoryStorage,
    Message,
    Settings,
    Task,
    TaskFunction,
    TaskManager,
    TaskRegistry,
    TaskStatus,
)

LIMIT = 2048


@pytest.fixture
def ran() -> list[str]:
    return []


@pytest.fixture
def registry(ran: list[str]) -> TaskRegistry:
    registry = TaskRegistry()
    registry.register("job", lambda key, pad="": ran.append(key))
    return registry


async def _deliver(
    broker: MemoryBroker, message: Message, settings: Settings, registry: TaskRegistry
) -> str:
    """Push ``message`` raw, run what arrives, return the dead-letter reason."""
    await broker.push_messages([message])
    [reservation] = await broker.reserve([message.queue], lease=5, timeout=1)
    assert reservation.task.id == message.id  # whatever the body claims
    assert reservation.defect is not None
    await Executor(broker, MemoryStorage(), registry, settings).execute(reservation)
    [letter] = await broker.dead_letters(message.queue)
    assert letter.id == message.id
    assert (await broker.stats(message.queue)).reserved == 0
    return letter.reason


@pytest.mark.parametrize(
    ("field", "value"), [("id", "another-task"), ("queue", "other")], ids=["id", "queue"]
)
async def test_a_body_naming_another_message_is_dead_lettered_not_run(
    settings: Settings, registry: TaskRegistry, ran: list[str], field: str, value: str
) -> None:
    broker = MemoryBroker()
    task = Task.new("job", {"args": ["k"]}).model_copy(update={field: value})
    message = Message("the-message", "default", broker.codec.encode(task))
    reason = await _deliver(broker, message, settings, registry)
    assert "malformed message" in reason
    assert value in reason
    assert ran == []


def test_codec_refuses_to_decode_a_body_above_the_limit() -> None:
    codec = Codec.json(max_payload_bytes=LIMIT)
    fits = Task.new("job", {"args": ["k"]})
    assert codec.decode(codec.encode(fits)) == fits
    big = Codec.json(max_payload_bytes=10 * LIMIT).encode(Task.new("job", "x" * LIMIT))
    with pytest.raises(DecodeError, match=rf"{len(big)} bytes, above the limit of {LIMIT}"):
        codec.decode(big)


async def test_an_oversize_body_pushed_raw_is_dead_lettered_not_run(
    settings: Settings, registry: TaskRegistry, ran: list[str]
) -> None:
    broker = MemoryBroker(Codec.json(max_payload_bytes=LIMIT))
    task = Task.new("job", {"args": ["k"], "kwargs": {"pad": "x" * LIMIT}})
    body = Codec.json(max_payload_bytes=10 * LIMIT).encode(task)
    reason = await _deliver(broker, Message(task.id, "default", body), settings, registry)
    assert f"above the limit of {LIMIT} bytes" in reason
    assert ran == []


def _near_limit_manager() -> TaskManager:
    return TaskManager(
        broker_url="memory://",
        storage_url="memory://",
        max_payload_bytes=LIMIT,
        retry_backoff=0.0,
        max_retries=1,
    )


async def _fill(manager: TaskManager, task: TaskFunction[..., None], margin: int) -> str:
    """Enqueue ``task`` with a payload ``margin`` bytes short of the limit; its id."""
    probe = manager.build_task(task.name, ["x"])
    room = LIMIT - len(manager.broker.codec.encode(probe)) - margin
    return (await task.enqueue("x" * (1 + room))).id


async def test_a_failure_does_not_push_a_near_limit_task_over_it() -> None:
    """The retry and the dead letter carry the error but not the traceback (the record
    keeps it), so retries run as configured and the reason is the real one."""
    manager = _near_limit_manager()
    runs: list[int] = []

    @manager.task(name="fails")
    def fails(pad: str) -> None:
        runs.append(len(pad))
        raise RuntimeError("always")

    task_id = await _fill(manager, fails, margin=300)
    await manager.drain()
    record = await manager.get(task_id)
    [letter] = await manager.broker.dead_letters("default")
    assert len(runs) == 2  # the attempt and its one retry
    assert (record.status, record.attempts) == (TaskStatus.DEAD, 2)
    assert record.traceback is not None
    assert letter.reason == "max_retries exceeded (1)"
    assert letter.task is not None
    assert letter.task.error == "RuntimeError: always"
    await manager.close()


async def test_a_task_whose_error_cannot_fit_is_dead_lettered_not_retried_forever() -> None:
    manager = _near_limit_manager()
    runs: list[int] = []

    @manager.task(name="loud")
    def loud(pad: str) -> None:
        runs.append(len(pad))
        raise RuntimeError("x" * 5000)

    task_id = await _fill(manager, loud, margin=50)
    await manager.drain()
    [letter] = await manager.broker.dead_letters("default")
    assert len(runs) == 1
    assert (await manager.get(task_id)).status is TaskStatus.DEAD
    assert letter.reason.startswith("cannot retry: ")
    assert "max_payload_bytes" in letter.reason
    await manager.close()


@pytest.mark.parametrize(
    "body",
    [
        b'application/json\n{"name": "ok", ")\\u0000": 1}',  # a field name holding a NUL
        b'application/json\n{"name": "ok", "\\u001b[31mred": 1}',  # a terminal escape
    ],
    ids=["nul", "escape"],
)
def test_decode_errors_escape_what_a_log_or_a_text_column_cannot_take(body: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        Codec.json().decode(body)
    message = str(caught.value)
    assert message.startswith("malformed message:")
    assert message.isprintable(), repr(message)
    assert "\\x00" in message or "\\x1b" in message  # escaped, not dropped
