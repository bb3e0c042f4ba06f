"""Broker contract, part 3: dead letters and messages whose body cannot be decoded."""

from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .._broker import Broker, Capability, Message, QueueStats
from .._errors import StaleLeaseError
from .._ids import new_task_id
from .._task import Task, TaskStatus
from ._helpers import ASYNC, DEFAULT, LONG_LEASE, drain, make_task, require, reserve_one


class _MakeDirOnUnpickle:
    """Unpickling this creates a directory: proof that a pickle body was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (str(self.path),)


def _marker(tmp_path: Path) -> Path:
    return tmp_path / "unpickled-marker"


def _pickle_body(tmp_path: Path) -> bytes:
    return b"application/x-python-pickle\n" + pickle.dumps(_MakeDirOnUnpickle(_marker(tmp_path)))


def _json_body(data: dict[str, Any]) -> bytes:
    return b"application/json\n" + json.dumps(data).encode()


BAD_BODIES: dict[str, Callable[[Path], bytes]] = {
    "not-utf8": lambda _: b"\xff\xfe",
    "empty": lambda _: b"",
    "broken-json": lambda _: b"application/json\n{not json",
    "pickle": _pickle_body,
    "unknown-content-type": lambda _: b"application/x-unheard-of\n\x00\x01",
    "missing-fields": lambda _: _json_body({"payload": 1, "queue": DEFAULT}),
    "unknown-field": lambda _: _json_body({"name": "ok", "unexpected": True}),
    "wrong-type": lambda _: _json_body({"name": "ok", "attempts": "many"}),
}


async def _dead_lettered(broker: Broker, count: int, queue: str = DEFAULT) -> list[Task]:
    """Push ``count`` tasks and dead-letter each with reason ``reason-<i>``."""
    tasks = [make_task(queue=queue, payload=i) for i in range(count)]
    await broker.push_many(tasks)
    for i in range(count):
        reservation = await reserve_one(broker, [queue])
        assert reservation.task.id == tasks[i].id
        await broker.dead_letter(reservation, f"reason-{i}")
    return tasks


class BrokerRecordTests:
    pytestmark = [ASYNC]

    async def test_dead_letter_keeps_reason_and_task(self, broker: Broker) -> None:
        require(broker, Capability.DEAD_LETTER)
        started = time.time()
        tasks = await _dead_lettered(broker, 3)
        letters = await broker.dead_letters(DEFAULT)
        assert [(d.id, d.queue, d.reason) for d in letters] == [
            (t.id, DEFAULT, f"reason-{i}") for i, t in enumerate(tasks)
        ]
        assert [d.task for d in letters] == tasks
        assert all(started - 60 <= d.dead_at <= time.time() + 60 for d in letters)
        assert await broker.stats(DEFAULT) == QueueStats(dead=3)
        assert await broker.queue_length(DEFAULT) == 0
        assert await broker.reserve([DEFAULT], lease=LONG_LEASE, timeout=0) == []
        page = await broker.dead_letters(DEFAULT, limit=2, offset=1)
        assert [d.id for d in page] == [t.id for t in tasks[1:]]
        assert [d.id for d in await broker.dead_letters(DEFAULT, limit=1)] == [tasks[0].id]
        assert await broker.dead_letters("other") == []

    async def test_dead_letter_token_is_spent(self, broker: Broker) -> None:
        require(broker, Capability.DEAD_LETTER)
        await broker.push(make_task())
        reservation = await reserve_one(broker)
        await broker.dead_letter(reservation, "done with it")
        with pytest.raises(StaleLeaseError):
            await broker.ack(reservation)
        with pytest.raises(StaleLeaseError):
            await broker.dead_letter(reservation, "twice")
        assert len(await broker.dead_letters(DEFAULT)) == 1

    async def test_dead_letter_with_updated_task(self, broker: Broker) -> None:
        require(broker, Capability.DEAD_LETTER)
        await broker.push(make_task())
        reservation = await reserve_one(broker)
        final = reservation.task.model_copy(
            update={"status": TaskStatus.DEAD, "attempts": 4, "error": "max_retries exceeded"}
        )
        await broker.dead_letter(reservation, "max_retries exceeded", final)
        [letter] = await broker.dead_letters(DEFAULT)
        assert letter.task == final

    async def test_requeue_dead_only_the_requested_ids(self, broker: Broker) -> None:
        require(broker, Capability.DEAD_LETTER)
        tasks = await _dead_lettered(broker, 3)
        await _dead_lettered(broker, 1, queue="other")
        assert await broker.requeue_dead(DEFAULT, [tasks[1].id, new_task_id()]) == [tasks[1].id]
        assert await broker.stats(DEFAULT) == QueueStats(ready=1, dead=2)
        assert [d.id for d in await broker.dead_letters(DEFAULT)] == [tasks[0].id, tasks[2].id]
        again = await reserve_one(broker)
        assert again.task == tasks[1]
        assert again.defect is None
        await broker.ack(again)
        assert sorted(await broker.requeue_dead(DEFAULT)) == sorted([tasks[0].id, tasks[2].id])
        assert sorted(await drain(broker)) == sorted([tasks[0].id, tasks[2].id])
        assert await broker.dead_letters(DEFAULT) == []
        assert len(await broker.dead_letters("other")) == 1

    async def test_purge_dead(self, broker: Broker) -> None:
        require(broker, Capability.DEAD_LETTER)
        await _dead_lettered(broker, 2)
        await _dead_lettered(broker, 1, queue="other")
        assert await broker.purge_dead(DEFAULT) == 2
        assert await broker.dead_letters(DEFAULT) == []
        assert (await broker.stats(DEFAULT)).dead == 0
        assert await broker.purge_dead(DEFAULT) == 0
        assert (await broker.stats("other")).dead == 1

    @pytest.mark.parametrize("kind", list(BAD_BODIES))
    async def test_undecodable_message_is_delivered_with_a_defect(
        self, broker: Broker, tmp_path: Path, kind: str
    ) -> None:
        message = Message(new_task_id(), "raw", BAD_BODIES[kind](tmp_path))
        good = make_task(queue="raw")
        await broker.push_messages([message])
        await broker.push(good)
        reservation = await reserve_one(broker, ["raw"])
        assert not _marker(tmp_path).exists(), "a pickle body was unpickled"
        assert isinstance(reservation.defect, str)
        assert reservation.defect, "the defect must say why the body was refused"
        assert reservation.task.id == message.id
        assert reservation.queue == "raw"
        if Capability.DEAD_LETTER in broker.capabilities:
            await broker.dead_letter(reservation, reservation.defect)
            [letter] = await broker.dead_letters("raw")
            assert (letter.id, letter.reason, letter.task) == (message.id, reservation.defect, None)
        else:
            await broker.ack(reservation)
        after = await reserve_one(broker, ["raw"])  # the queue is not wedged
        assert (after.task, after.defect) == (good, None)
        await broker.ack(after)
        assert not _marker(tmp_path).exists()
