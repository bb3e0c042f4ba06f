"""The plugin as bg-coor finds it (the ``bgcoor`` entry point), and msgpack tasks end to end
on the memory backend: rich arguments arrive as their types; a worker that does not
accept msgpack dead-letters its messages unrun."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from typing import Any

from bgcoor_msgpack import MsgpackSerializer
from msgpack_rich import round_trip

from bgcoor_core import Message, Task, TaskManager, TaskStatus, build_plugin_host, load_settings

CT = "application/msgpack"


def test_the_plugin_is_found_through_the_entry_point_group() -> None:
    [ep] = [ep for ep in entry_points(group="bgcoor") if ep.name == "msgpack"]
    assert ep.value == "bgcoor_msgpack._plugin"
    assert ep.dist is not None
    assert ep.dist.name == "bgcoor-msgpack"
    host = build_plugin_host()
    assert host.failures == []
    info = {i.name: i for i in host.describe()}["msgpack"]
    assert info.distribution == "bgcoor-msgpack"
    assert info.provides == [f"serializer {CT}"]
    assert isinstance(host.serializers.serializers[CT], MsgpackSerializer)


def test_registering_imports_no_msgpack_until_a_task_is_encoded() -> None:
    """Every installed plugin's hooks load in every process: msgpack must not, until used."""
    probe = (
        "import sys, bgcoor_core\n"
        "host = bgcoor_core.build_plugin_host()\n"
        "codec = host.make_codec(bgcoor_core.load_settings(serializer='msgpack'))\n"
        "print('msgpack' in sys.modules)\n"
        "codec.decode(codec.encode(bgcoor_core.Task.new('t')))\n"
        "print('msgpack' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_the_short_name_and_the_content_type_both_select_it() -> None:
    host = build_plugin_host()
    by_name = host.make_codec(load_settings(serializer="msgpack"))
    by_type = host.make_codec(load_settings(serializer=CT))
    assert by_name.content_type == by_type.content_type == CT
    body = by_name.encode(Task.new("t", {"n": 1}))
    assert body.startswith(CT.encode() + b"\n")
    # Accepted by default everywhere it is installed, as every format but pickle is.
    consumer = host.make_codec(load_settings())
    assert CT in consumer.accepted
    assert consumer.decode(body).payload == {"n": 1}


async def test_rich_arguments_arrive_as_their_types(fast: dict[str, Any]) -> None:
    manager = TaskManager(
        broker_url="memory://", storage_url="memory://", serializer="msgpack", **fast
    )
    try:
        await round_trip(manager)
    finally:
        await manager.close()


async def test_a_worker_accepting_only_json_dead_letters_a_msgpack_message(
    fast: dict[str, Any],
) -> None:
    manager = TaskManager(
        broker_url="memory://", storage_url="memory://", accept_content="json", **fast
    )
    ran: list[int] = []

    @manager.task(name="job")
    def job(n: int) -> None:
        ran.append(n)

    producer = manager.host.make_codec(load_settings(serializer="msgpack"))
    task = manager.build_task("job", [1])
    await manager.storage.save(task)
    try:
        assert manager.broker.codec.accepted == {"application/json"}
        await manager.broker.push_messages([Message(task.id, "default", producer.encode(task))])
        assert await manager.drain() == 1
        [letter] = await manager.broker.dead_letters("default")
        assert letter.id == task.id
        assert f"refused message with content type '{CT}': not accepted" in letter.reason
        assert ran == []
        assert (await manager.get(task.id)).status is TaskStatus.DEAD
    finally:
        await manager.close()
