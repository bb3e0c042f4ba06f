"""``bgcoor inspect`` of sealed values (payload codecs, pickle): opened when this process
can, described when it cannot, and never a key in the output."""

from __future__ import annotations

import asyncio
import base64
import json
import pickle
from pathlib import Path
from typing import Any

import pytest
from cli_support import cli, fails, field, ok, sqlite_env

from bgcoor_core import Task, TaskManager, TaskRegistry
from bgcoor_core._values import Opaque

KEYS = {
    "k1": base64.b64encode(bytes(range(32))).decode(),
    "k2": base64.b64encode(b"2" * 32).decode(),
}
TEXT = "the launch codes " * 100


def _echo(value: Any) -> Any:
    return value


def _settled(payload: Any) -> str:
    """Run ``codecs.echo(payload)`` to its end with the environment's settings."""

    async def go() -> str:
        registry = TaskRegistry()
        registry.register("codecs.echo", _echo)
        manager = TaskManager(registry=registry)
        try:
            handle = await manager.enqueue("codecs.echo", payload)
            await manager.drain()
            return handle.id
        finally:
            await manager.close()

    return asyncio.run(go())


def _submitted(task: Task) -> str:
    async def go() -> str:
        manager = TaskManager()
        try:
            return (await manager.submit(task)).id
        finally:
            await manager.close()

    return asyncio.run(go())


@pytest.fixture
def encrypted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A task that ran with its payload and result compressed and encrypted under k1."""
    sqlite_env(monkeypatch, tmp_path)
    monkeypatch.setenv("BGCOOR_PAYLOAD_CODECS", "zstd,aesgcm")
    monkeypatch.setenv("BGCOOR_ENCRYPTION_KEYS", f"k1:{KEYS['k1']}")
    return _settled(TEXT)


def _no_keys_in(text: str) -> None:
    for key in KEYS.values():
        assert key not in text
        assert base64.b64decode(key).hex() not in text


def test_inspect_opens_what_it_can(encrypted: str) -> None:
    result = cli("inspect", encrypted)
    assert result.exit_code == 0, result.output
    assert field(result.stdout, "status") == "succeeded"
    assert field(result.stdout, "payload") == json.dumps({"args": [TEXT], "kwargs": {}})
    assert field(result.stdout, "result") == json.dumps(TEXT)
    _no_keys_in(result.output)


def test_inspect_json_opens_what_it_can(encrypted: str) -> None:
    data = json.loads(ok("inspect", encrypted, "--json"))
    assert data["payload"] == {"args": [TEXT], "kwargs": {}}
    assert data["result"] == TEXT
    assert data["status"] == "succeeded"


def test_inspect_describes_what_it_cannot_open(
    encrypted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BGCOOR_ENCRYPTION_KEYS", f"k2:{KEYS['k2']}")  # rotated away from k1
    result = cli("inspect", encrypted)
    assert result.exit_code == 0, result.output
    payload = field(result.stdout, "payload")
    assert payload.startswith("encrypted (key k1), not opened: refused value sealed with ")
    assert "this process does not hold" in payload
    assert field(result.stdout, "result").startswith("encrypted (key k1), not opened")
    assert field(result.stdout, "status") == "succeeded"  # the envelope stays readable
    _no_keys_in(result.output)

    data = json.loads(ok("inspect", encrypted, "--json"))
    sealed = data["payload"]
    assert sealed["$type"] == "sealed"
    assert sealed["value"]["shown"] == "encrypted (key k1)"
    assert sealed["value"]["codecs"] == "zstd,aesgcm:k1"
    assert sealed["value"]["content_type"] == "application/json"
    assert data["result"]["value"]["codecs"] == "zstd,aesgcm:k1"
    assert "this process does not hold" in data["result"]["value"]["not_opened"]


def test_inspect_describes_a_pickle_value_it_does_not_accept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    data = pickle.dumps({"n": [1, 2, 3]})
    task_id = _submitted(Task.new("codecs.echo", Opaque("application/x-python-pickle", data)))
    shown = field(ok("inspect", task_id), "payload")
    assert shown.startswith(f"<application/x-python-pickle value, {len(data)} bytes>, not opened")
    assert "not accepted" in shown
    described = json.loads(ok("inspect", task_id, "--json"))["payload"]
    assert described["value"]["bytes"] == len(data)
    # Where pickle is accepted, it is opened.
    monkeypatch.setenv("BGCOOR_ACCEPT_CONTENT", "json,pickle")
    assert field(ok("inspect", task_id), "payload") == '{"n": [1, 2, 3]}'


def test_a_bad_key_setting_is_reported_without_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sqlite_env(monkeypatch, tmp_path)
    monkeypatch.setenv("BGCOOR_ENCRYPTION_KEYS", f"k1:{KEYS['k1']},k2:{KEYS['k2'][:-8]}")
    line = fails("inspect", "some-id")
    assert "BGCOOR_ENCRYPTION_KEYS: key 'k2' is not 32 bytes of base64" in line
    _no_keys_in(line)
