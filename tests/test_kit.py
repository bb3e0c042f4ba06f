"""The public backend kit (``bgcoor_core.kit``), and plugins that use only it."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from bgcoor_core import CorruptRecordError, Task, kit

ROOT = Path(__file__).resolve().parent.parent


def test_decode_record_names_the_id_and_the_problem() -> None:
    task = Task.new("jobs.x")
    assert kit.decode_record(task.id, task.model_dump_json(), status="pending") == task
    with pytest.raises(CorruptRecordError, match=f"task {task.id} has unknown status 'bogus'"):
        kit.decode_record(task.id, task.model_dump_json(), status="bogus")
    with pytest.raises(CorruptRecordError, match=f"task {task.id} cannot be decoded"):
        kit.decode_record(task.id, b'{"name": 5}')
    other = Task.new("jobs.y")
    with pytest.raises(CorruptRecordError, match="holds the record of task"):
        kit.decode_record(task.id, other.model_dump_json())


async def test_shielded_take_hands_back_what_a_cancelled_caller_took() -> None:
    given_back: list[list[str]] = []
    release = asyncio.Event()

    async def take() -> list[str]:
        await release.wait()
        return ["m1", "m2"]

    async def hand_back(rows: list[str]) -> None:
        given_back.append(rows)

    caller = asyncio.create_task(kit.shielded_take(take(), hand_back))
    await asyncio.sleep(0.01)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert given_back == []  # the take still runs: nothing to hand back yet
    release.set()
    for _ in range(50):
        if given_back:
            break
        await asyncio.sleep(0.01)
    assert given_back == [["m1", "m2"]]
    kept = await kit.shielded_take(asyncio.sleep(0, result=["m3"]), given_back.append)
    assert kept == ["m3"]
    assert given_back == [["m1", "m2"]]  # not cancelled: nothing handed back


@pytest.mark.parametrize("plugin", ["bgcoor-redis", "bgcoor-postgres"])
def test_plugins_import_no_private_core_module(plugin: str) -> None:
    """A third-party backend needs only the public API and the kit: ours prove it."""
    private = re.compile(r"bgcoor_core\._\w+|from bgcoor_core import _")
    found = [
        f"{path.name}: {match.group(0)}"
        for path in sorted((ROOT / "plugins" / plugin).rglob("bgcoor_*/*.py"))
        for match in private.finditer(path.read_text())
    ]
    assert not found, found


def test_record_json_reuses_a_json_message_text_and_dumps_otherwise() -> None:
    from bgcoor_core import Codec
    from bgcoor_core._codec import JsonSerializer
    from bgcoor_core.backends.memory import MemoryBroker
    from bgcoor_core.serializers import PickleSerializer

    task = Task.new("jobs.x", {"args": [1], "kwargs": {}})
    message = MemoryBroker().to_message(task)
    assert message.record == task.model_dump_json()
    assert message.body == b"application/json\n" + message.record.encode()
    assert kit.record_json(task, message) is message.record  # not dumped again
    other = Task.new("jobs.y")
    assert kit.record_json(other, message) == other.model_dump_json()  # another task's
    assert kit.record_json(task) == task.model_dump_json()
    # Another format, or a claim check, carries no record text: the record is dumped.
    pickled = Codec({"p": PickleSerializer()}, content_type="p", accept=["p"])
    assert MemoryBroker(codec=pickled).to_message(task).record is None
    big = Task.new("jobs.x", {"args": ["x" * 2000], "kwargs": {}})
    json_only = {"application/json": JsonSerializer()}
    claimed = MemoryBroker(codec=Codec(json_only, max_payload_bytes=1000, claim_check_bytes=10**4))
    assert claimed.to_message(big).record is None
    assert kit.record_json(big, claimed.to_message(big)) == big.model_dump_json()
