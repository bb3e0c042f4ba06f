"""The plugin as users meet it: found through the ``bgcoor`` entry point, chosen with
``serializer="cbor"``, carrying annotated rich arguments through a worker, and refused
(dead-lettered, unread) by a worker that accepts JSON only."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from bgcoor_cbor import CONTENT_TYPE, CborSerializer, _tags
from cbor_support import FAST, check_typed_round_trip

from bgcoor_core import DecodeError, Task, TaskManager, TaskStatus, build_plugin_host, load_settings
from bgcoor_core.kit import Opaque


def test_the_entry_point_is_declared_by_the_distribution() -> None:
    [point] = [ep for ep in entry_points(group="bgcoor") if ep.name == "cbor"]
    assert point.value == "bgcoor_cbor._plugin"
    assert point.dist is not None
    assert point.dist.name == "bgcoor-cbor"


def test_the_plugin_host_finds_the_serializer() -> None:
    host = build_plugin_host()
    assert host.failures == []
    info = {i.name: i for i in host.describe()}["cbor"]
    assert info.distribution == "bgcoor-cbor"
    assert info.provides == [f"serializer {CONTENT_TYPE}"]
    serializer = host.serializers.serializers[CONTENT_TYPE]
    assert isinstance(serializer, CborSerializer)
    assert serializer.name == "cbor"
    assert not getattr(serializer, "trusted_only", False)  # accepted by default


def test_the_short_name_and_default_acceptance() -> None:
    host = build_plugin_host()
    producer = host.make_codec(load_settings(serializer="cbor"))
    assert producer.content_type == CONTENT_TYPE
    body = producer.encode(Task.new("t", {"args": [1], "kwargs": {}}))
    assert body.startswith(b"application/cbor\n")
    consumer = host.make_codec(load_settings())  # every installed format but pickle
    assert CONTENT_TYPE in consumer.accepted
    assert consumer.decode(body).payload == {"args": [1], "kwargs": {}}
    json_only = host.make_codec(load_settings(accept_content="json"))
    with pytest.raises(DecodeError, match=r"content type 'application/cbor': not accepted"):
        json_only.decode(body)


async def test_a_task_runs_on_the_memory_backend_with_its_rich_arguments() -> None:
    manager = TaskManager(
        broker_url="memory://", storage_url="memory://", serializer="cbor", **FAST
    )
    try:
        assert manager.broker.codec.content_type == CONTENT_TYPE
        await check_typed_round_trip(manager)
    finally:
        await manager.close()


async def test_a_json_only_worker_dead_letters_a_cbor_message_unread(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # one backend, two managers
    producer = TaskManager(broker_url=url, storage_url=url, serializer="cbor", **FAST)
    worker = TaskManager(broker_url=url, storage_url=url, accept_content="json", **FAST)
    calls: list[int] = []
    try:
        for manager in (producer, worker):

            @manager.task(name="cbor.count")
            def count(n: int) -> int:
                calls.append(n)
                return n

        handle = await producer.enqueue("cbor.count", 1)
        assert await worker.drain() == 1
        assert calls == []  # never decoded, never run
        record = await worker.get(handle.id)
        assert record.status is TaskStatus.DEAD
        assert "application/cbor" in (record.error or "")
        [letter] = await worker.broker.dead_letters("default")
        assert letter.reason is not None
        assert "content type 'application/cbor': not accepted" in letter.reason
    finally:
        await producer.close()
        await worker.close()


async def test_payload_codecs_seal_the_values_in_a_cbor_message() -> None:
    """With zstd and AES-GCM, the payload is CBOR, compressed, encrypted and carried as
    the sealed-value tag in the CBOR message; the worker opens it into the rich types."""
    key = base64.b64encode(os.urandom(32)).decode()
    manager = TaskManager(
        broker_url="memory://",
        storage_url="memory://",
        serializer="cbor",
        payload_codecs="zstd,aesgcm",
        encryption_keys=f"k1:{key}",
        compression_threshold=0,
        **FAST,
    )
    try:
        codec = manager.broker.codec
        task = Task.new("t", {"args": [1], "kwargs": {}})
        task.payload = codec.seal(task.payload)
        assert isinstance(task.payload, Opaque)
        body = codec.encode(task)
        assert _tags.OPAQUE.to_bytes(4, "big") in body
        assert task.payload.codecs.endswith("aesgcm:k1")  # zstd skips what it cannot shrink
        assert task.payload.codecs.encode() in body
        await check_typed_round_trip(manager)
    finally:
        await manager.close()


def test_registering_imports_no_cbor2() -> None:
    """bg-coor loads every installed plugin at start: cbor2 waits for the first value."""
    script = (
        "import sys\n"
        "from bgcoor_core import build_plugin_host, load_settings\n"
        "host = build_plugin_host()\n"
        "codec = host.make_codec(load_settings(serializer='cbor'))\n"
        "assert 'cbor2' not in sys.modules, 'imported at registration'\n"
        "from bgcoor_core import Task\n"
        "codec.decode(codec.encode(Task.new('t')))\n"
        "assert 'cbor2' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
