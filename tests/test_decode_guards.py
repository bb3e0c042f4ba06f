"""Bodies a worker must refuse even though they parse: they name another message, or they
are bigger than the limit. Found by the reliability suite (``tests/reliability``), pinned
here on the memory backend so the fast suite keeps them."""

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
    TaskRegistry,
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
    task = Task.new("job", {"args": ["k"]}, **{field: value})
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
