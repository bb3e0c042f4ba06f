"""Payload codecs (issue 15 part 5): compression and encryption of task values, key
rotation, tampering and bombs refused, secrets never shown, and values sealed end to end
through every backend, with ``handle.result()`` opening them."""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from bgcoor_core import (
    Codec,
    DecodeError,
    PayloadError,
    PayloadTooLargeError,
    SettingsError,
    Task,
    TaskManager,
    TaskRegistry,
    TaskStatus,
    build_plugin_host,
    hookimpl,
    load_settings,
)
from bgcoor_core._codec import JSON
from bgcoor_core._errors import PluginError
from bgcoor_core._payload_codecs import (
    AesGcmCodec,
    EncryptionKeys,
    PayloadCodec,
    PayloadCodecRegistry,
    ZstdCodec,
)
from bgcoor_core._values import Opaque
from bgcoor_core.testing.values import rich_values, same

HOST = build_plugin_host()
RAW_KEYS = {"k1": bytes(range(32)), "k2": bytes(range(100, 132)), "k3": os.urandom(32)}
KEYS = {key_id: base64.b64encode(key).decode() for key_id, key in RAW_KEYS.items()}
PICKLE = "application/x-python-pickle"
#: Compressible: far above the 1024-byte threshold, a few dozen bytes compressed.
BIG_TEXT = "all work and no play " * 200


def keys(*ids: str) -> str:
    """``BGCOOR_ENCRYPTION_KEYS`` for these key ids, in this order."""
    return ",".join(f"{key_id}:{KEYS[key_id]}" for key_id in ids)


def codec_for(**overrides: Any) -> Codec:
    return HOST.make_codec(load_settings(**overrides))


SEALING = codec_for(payload_codecs="zstd,aesgcm", encryption_keys=keys("k1"))
EVERYTHING = codec_for(
    payload_codecs="zstd,aesgcm", encryption_keys=keys("k1"), compression_threshold=0
)


def _secrets_absent(text: str) -> bool:
    return not any(
        shown in text
        for key_id, key in RAW_KEYS.items()
        for shown in (KEYS[key_id], repr(key), key.hex(), base64.urlsafe_b64encode(key).decode())
    )


# -- the codecs alone --------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=4000))
def test_zstd_round_trips_any_bytes(data: bytes) -> None:
    codec = ZstdCodec(level=3, threshold=0)
    packed, spec = codec.encode(data)
    back = codec.decode(packed, spec, len(data)) if spec else packed
    assert back == data
    assert spec in ("", "zstd")


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=4000))
def test_aesgcm_round_trips_any_bytes_under_a_fresh_nonce(data: bytes) -> None:
    codec = AesGcmCodec(EncryptionKeys({"k1": RAW_KEYS["k1"]}))
    first, spec = codec.encode(data)
    second, _ = codec.encode(data)
    assert spec == "aesgcm:k1"
    assert first != second  # a random nonce per value: equal values do not look equal
    assert len(first) == len(data) + 12 + 16
    assert codec.decode(first, spec, len(data)) == data
    assert codec.decode(second, spec, len(data)) == data


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=3000))
def test_bytes_round_trip_through_the_whole_chain(data: bytes) -> None:
    sealed = EVERYTHING.seal(data)
    assert type(sealed) is Opaque
    assert sealed.codecs.endswith("aesgcm:k1")
    assert EVERYTHING.open(sealed) == data


@settings(max_examples=100, deadline=None)
@given(value=rich_values())
def test_rich_values_round_trip_sealed_in_a_record(value: Any) -> None:
    task = Task.new("t", {"args": [value], "kwargs": {}})
    body = EVERYTHING.encode(task)
    back = EVERYTHING.decode(body)
    assert type(back.payload) is Opaque
    # The record (always JSON) holds the sealed value, and opens to the same value.
    record = Task.model_validate_json(back.model_dump_json())
    assert same(EVERYTHING.open(record.payload), {"args": [value], "kwargs": {}})


def test_the_value_names_what_it_went_through() -> None:
    sealed = SEALING.seal({"text": BIG_TEXT})
    assert isinstance(sealed, Opaque)
    assert (sealed.content_type, sealed.codecs) == (JSON, "zstd,aesgcm:k1")
    assert len(sealed.data) < 200  # compressed before it was encrypted
    assert repr(sealed) == f"<{JSON} value through zstd,aesgcm:k1, {len(sealed.data)} bytes>"
    assert SEALING.open(sealed) == {"text": BIG_TEXT}


# -- threshold ------------------------------------------------------------------------


def test_below_the_threshold_a_value_is_left_unsealed() -> None:
    codec = codec_for(payload_codecs="zstd", compression_threshold=2048)
    small = {"text": "x" * 1000}
    assert codec.seal(small) is small
    large = {"text": "x" * 3000}
    sealed = codec.seal(large)
    assert isinstance(sealed, Opaque)
    assert sealed.codecs == "zstd"
    assert codec.open(sealed) == large


def test_a_value_compression_does_not_shrink_is_left_as_it_is() -> None:
    codec = codec_for(payload_codecs="zstd", compression_threshold=0)
    noise = base64.b64encode(os.urandom(30)).decode()  # short: zstd's frame outweighs it
    assert codec.seal(noise) == noise


def test_with_encryption_a_small_value_is_encrypted_not_compressed() -> None:
    sealed = SEALING.seal({"n": 1})
    assert isinstance(sealed, Opaque)
    assert sealed.codecs == "aesgcm:k1"
    assert SEALING.open(sealed) == {"n": 1}


def test_without_payload_codecs_nothing_is_sealed_and_nothing_changes() -> None:
    plain = codec_for()
    assert plain.payload_codecs == ()
    payload = {"args": [BIG_TEXT], "kwargs": {}}
    task = Task.new("t", payload)
    body = plain.encode(task)
    assert task.payload is payload  # not replaced
    assert BIG_TEXT.encode() in body
    assert plain.check_result("t", payload, 10**6) is payload


def test_a_worker_without_codecs_configured_still_opens_compressed_values() -> None:
    sealed = codec_for(payload_codecs="zstd").seal({"text": BIG_TEXT})
    assert codec_for().open(sealed) == {"text": BIG_TEXT}


# -- key rotation ---------------------------------------------------------------------


def test_key_rotation_old_values_open_new_ones_use_the_newest_key() -> None:
    before = codec_for(payload_codecs="aesgcm", encryption_keys=keys("k1"))
    after = codec_for(payload_codecs="aesgcm", encryption_keys=keys("k1", "k2"))
    old = before.seal({"v": "old"})
    new = after.seal({"v": "new"})
    assert (old.codecs, new.codecs) == ("aesgcm:k1", "aesgcm:k2")
    assert after.open(old) == {"v": "old"}
    assert after.open(new) == {"v": "new"}
    with pytest.raises(DecodeError, match=r"encrypted \(key k2\), which this process does not"):
        before.open(new)


def test_the_key_new_values_use_may_be_named() -> None:
    codec = codec_for(
        payload_codecs="aesgcm", encryption_keys=keys("k1", "k2"), encryption_key_id="k1"
    )
    assert codec.seal({"v": 1}).codecs == "aesgcm:k1"


def test_keys_may_be_a_json_object_in_order() -> None:
    text = json.dumps({"k2": KEYS["k2"], "k1": KEYS["k1"]})
    codec = codec_for(payload_codecs="aesgcm", encryption_keys=text)
    assert codec.seal({"v": 1}).codecs == "aesgcm:k1"  # the last listed is the newest


# -- tampering and bombs ------------------------------------------------------------------


def _flipped(value: Opaque, index: int) -> Opaque:
    data = bytearray(value.data)
    data[index] ^= 0x01
    return Opaque(value.content_type, bytes(data), value.codecs)


@pytest.mark.parametrize("index", [0, 5, 12, -1, -17])  # nonce, ciphertext, tag
def test_a_flipped_byte_is_refused(index: int) -> None:
    sealed = SEALING.seal({"text": BIG_TEXT})
    with pytest.raises(DecodeError, match="fails authentication"):
        SEALING.open(_flipped(sealed, index))


def test_a_changed_key_id_is_refused_even_when_that_key_is_held() -> None:
    both = codec_for(payload_codecs="aesgcm", encryption_keys=keys("k1", "k2"))
    sealed = codec_for(payload_codecs="aesgcm", encryption_keys=keys("k1")).seal({"v": 1})
    replayed = Opaque(sealed.content_type, sealed.data, "aesgcm:k2")
    with pytest.raises(DecodeError, match=r"key k2\) but fails authentication"):
        both.open(replayed)
    # Even with k2's key being k1's bytes, the key id is bound: the value stays refused.
    same_bytes = EncryptionKeys({"k1": RAW_KEYS["k1"], "k2": RAW_KEYS["k1"]})
    with pytest.raises(ValueError, match="fails authentication"):
        AesGcmCodec(same_bytes).decode(sealed.data, "aesgcm:k2", 1000)


def test_a_changed_codec_list_is_refused() -> None:
    sealed = SEALING.seal({"text": BIG_TEXT})
    with pytest.raises(DecodeError, match="not valid zstd data"):
        SEALING.open(Opaque(sealed.content_type, sealed.data, "zstd"))
    with pytest.raises(DecodeError, match="no payload codec 'rot13' is installed here"):
        SEALING.open(Opaque(sealed.content_type, sealed.data, "rot13"))
    with pytest.raises(DecodeError, match="no key id"):
        SEALING.open(Opaque(sealed.content_type, sealed.data, "zstd,aesgcm"))


@pytest.mark.parametrize("content_size", [True, False], ids=["declared", "undeclared"])
def test_a_decompression_bomb_is_refused(content_size: bool) -> None:
    bomb = zstandard.ZstdCompressor(write_content_size=content_size).compress(b" " * 50_000_000)
    assert len(bomb) < 5000
    value = Opaque(JSON, bomb, "zstd")
    with pytest.raises(DecodeError, match=r"decompresses to more than 1048576 bytes"):
        codec_for().open(value)
    with pytest.raises(DecodeError, match=r"more than 10485760 bytes"):
        codec_for().open_result(value)


def test_a_value_that_declares_a_small_size_but_expands_is_cut_off() -> None:
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(b"x" * 5000)
    with pytest.raises(ValueError, match="more than 4999 bytes"):
        ZstdCodec().decode(undeclared, "zstd", 4999)
    assert ZstdCodec().decode(undeclared, "zstd", 5000) == b"x" * 5000


def test_a_content_type_not_accepted_is_refused_before_it_is_decrypted() -> None:
    pickled = codec_for(serializer="pickle", payload_codecs="aesgcm", encryption_keys=keys("k1"))
    sealed = pickled.seal({"v": 1})
    assert (sealed.content_type, sealed.codecs) == (PICKLE, "aesgcm:k1")
    assert pickled.open(sealed) == {"v": 1}
    with pytest.raises(DecodeError, match=r"x-python-pickle.*not accepted"):
        SEALING.open(sealed)


class Unusual:
    """Only pickle carries it."""

    def __init__(self, n: int) -> None:
        self.n = n


def test_pickle_with_codecs_seals_what_only_pickle_carries_and_leaves_the_rest() -> None:
    codec = codec_for(serializer="pickle", payload_codecs="zstd")
    small = codec.seal(Unusual(3))  # below the threshold: sealed whole, not compressed
    assert isinstance(small, Opaque)
    assert (small.content_type, small.codecs) == (PICKLE, "")
    assert codec.open(small).n == 3
    assert codec.seal({"n": 3}) == {"n": 3}
    big = codec.seal([Unusual(1)] * 10 + [BIG_TEXT])
    assert isinstance(big, Opaque)
    assert big.codecs == "zstd"


# -- limits ------------------------------------------------------------------------------


def test_a_message_too_big_raw_but_fitting_compressed_is_accepted() -> None:
    limit = 2048
    task = Task.new("t", {"args": ["y" * 1500], "kwargs": {}}, headers={"trace": "t" * 700})
    with pytest.raises(PayloadTooLargeError, match="above the limit of 2048"):
        codec_for(max_payload_bytes=limit).encode(task.model_copy())
    compressed = codec_for(max_payload_bytes=limit, payload_codecs="zstd")
    body = compressed.encode(task)
    assert len(body) < limit
    assert compressed.decode(body).payload.codecs == "zstd"


def test_a_payload_too_big_serialised_is_refused_even_if_it_compresses() -> None:
    codec = codec_for(max_payload_bytes=4096, payload_codecs="zstd")
    task = Task.new("t", {"args": ["z" * 5000], "kwargs": {}})
    with pytest.raises(PayloadTooLargeError, match=r"task 't' has a payload of 50\d\d bytes"):
        codec.encode(task)
    assert task.payload == {"args": ["z" * 5000], "kwargs": {}}


def test_a_result_is_measured_sealed_and_serialised() -> None:
    encrypted = codec_for(payload_codecs="aesgcm", encryption_keys=keys("k1"))
    fits_raw = base64.b64encode(os.urandom(2700)).decode()  # 3600 characters, noise
    assert codec_for().check_result("t", fits_raw, 4096) == fits_raw
    # Sealed (encrypted, then base64 in the record) it no longer fits.
    with pytest.raises(PayloadTooLargeError, match=r"result of 4\d\d\d bytes encoded"):
        encrypted.check_result("t", fits_raw, 4096)
    # Too big serialised, it is refused even though it would fit compressed.
    with pytest.raises(PayloadTooLargeError, match="BGCOOR_MAX_RESULT_BYTES"):
        codec_for(payload_codecs="zstd").check_result("t", BIG_TEXT, 4096)
    sealed = codec_for(payload_codecs="zstd").check_result("t", BIG_TEXT[:3000], 4096)
    assert sealed.codecs == "zstd"


def test_a_masked_secret_is_refused_before_it_is_encrypted() -> None:
    from pydantic import SecretStr

    task = Task.new("t", {"args": [SecretStr("hunter2")], "kwargs": {}})
    with pytest.raises(PayloadError, match="positional argument 0"):
        SEALING.encode(task)


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"payload_codecs": "zstd,lz5"}, r"BGCOOR_PAYLOAD_CODECS: unknown payload codec 'lz5'"),
        ({"payload_codecs": "zsdt"}, r"did you mean 'zstd'\?"),
        ({"payload_codecs": "aesgcm"}, r"names aesgcm, but BGCOOR_ENCRYPTION_KEYS is not set"),
        ({"payload_codecs": "zstd,zstd"}, r"payload_codecs=: a payload codec is listed twice"),
        ({"encryption_keys": "k1:" + KEYS["k1"][:21]}, r"key 'k1' is not valid base64"),
        (
            {"encryption_keys": "k1:" + base64.b64encode(b"short").decode()},
            r"key 'k1' is not 32 bytes of base64 \(it is 5 bytes\)",
        ),
        ({"encryption_keys": KEYS["k1"]}, r"entry 1 has no id"),
        ({"encryption_keys": "k 1:" + KEYS["k1"]}, r"invalid key id 'k 1'"),
        ({"encryption_keys": f"{keys('k1')},{keys('k1')}"}, r"a key id is listed twice"),
        (
            {"encryption_keys": keys("k1"), "encryption_key_id": "k2"},
            r"BGCOOR_ENCRYPTION_KEY_ID: key 'k2' is not in BGCOOR_ENCRYPTION_KEYS \(ids: k1\)",
        ),
        ({"zstd_level": 23}, r"zstd_level=: 23 is out of range: use 1 to 22"),
        ({"compression_threshold": -1}, r"compression_threshold=: -1 is out of range"),
    ],
)
def test_bad_settings_name_the_setting(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingsError, match=message) as caught:
        codec_for(**overrides)
    assert _secrets_absent(str(caught.value))


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_PAYLOAD_CODECS", "zstd, aesgcm")
    monkeypatch.setenv("BGCOOR_ENCRYPTION_KEYS", keys("k1", "k2"))
    monkeypatch.setenv("BGCOOR_COMPRESSION_THRESHOLD", "10")
    monkeypatch.setenv("BGCOOR_ZSTD_LEVEL", "19")
    found = load_settings()
    assert found.payload_codecs == ["zstd", "aesgcm"]
    assert found.encryption_keys is not None
    assert found.encryption_keys.ids == ("k1", "k2")
    assert found.encryption_keys.secret("k2") == RAW_KEYS["k2"]
    zstd, aesgcm = HOST.make_codec(found).payload_codecs
    assert isinstance(zstd, ZstdCodec)
    assert isinstance(aesgcm, AesGcmCodec)
    assert (zstd.threshold, zstd.level, aesgcm.newest) == (10, 19, "k2")


def test_keys_never_appear_in_settings_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_ENCRYPTION_KEYS", keys("k1", "k2"))
    found = load_settings(payload_codecs="aesgcm")
    shown = [repr(found), str(found), found.model_dump_json(), repr(found.model_dump())]
    shown += [repr(found.encryption_keys), repr(HOST.make_codec(found).payload_codecs)]
    for text in shown:
        assert _secrets_absent(text), text
    assert "EncryptionKeys(k1, k2: **********)" in repr(found)
    assert '"encryption_keys":{"k1":"**********","k2":"**********"}' in found.model_dump_json()


def test_a_bad_key_stays_out_of_a_direct_validation_error() -> None:
    from pydantic import ValidationError

    from bgcoor_core import Settings

    text = f"{keys('k1')},k2:{KEYS['k2'][:-4]}"
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({"encryption_keys": text})
    assert _secrets_absent(str(caught.value))


# -- plugins ------------------------------------------------------------------------------


class XorCodec:
    """A toy third-party codec: every byte xor-ed with a settings-free constant."""

    name = "xor"

    def encode(self, data: bytes) -> tuple[bytes, str]:
        return bytes(b ^ 0x5A for b in data), "xor:5a"

    def decode(self, data: bytes, spec: str, limit: int) -> bytes:
        if spec != "xor:5a":
            raise ValueError(f"unknown xor spec {spec!r}")
        return bytes(b ^ 0x5A for b in data)


class XorPlugin:
    __name__ = "xor-plugin"

    @hookimpl
    def bgcoor_register_payload_codecs(self, codecs: PayloadCodecRegistry) -> None:
        codecs.add("xor", lambda settings: XorCodec())


def test_a_plugin_adds_a_payload_codec() -> None:
    assert isinstance(XorCodec(), PayloadCodec)
    host = build_plugin_host(plugins=[XorPlugin()])
    codec = host.make_codec(load_settings(payload_codecs="xor,aesgcm", encryption_keys=keys("k1")))
    sealed = codec.seal({"v": "secret"})
    assert sealed.codecs == "xor:5a,aesgcm:k1"
    assert codec.open(sealed) == {"v": "secret"}
    provides = {info.name: info.provides for info in host.describe()}
    assert "payload codec xor" in provides["xor-plugin"]


def test_two_plugins_claiming_one_codec_name_is_an_error() -> None:
    class Again(XorPlugin):
        __name__ = "another-xor"

    host = build_plugin_host(plugins=[XorPlugin(), Again()])
    with pytest.raises(PluginError, match="'xor' is provided by two plugins"):
        host.make_codec(load_settings())


def test_a_codec_that_cannot_work_here_is_a_settings_error_at_start() -> None:
    class Broken:
        __name__ = "broken"

        @hookimpl
        def bgcoor_register_payload_codecs(self, codecs: PayloadCodecRegistry) -> None:
            codecs.add("hsm", self.make)

        def make(self, settings: Any) -> PayloadCodec:
            raise RuntimeError("no HSM attached")

    host = build_plugin_host(plugins=[Broken()])
    with pytest.raises(SettingsError, match="BGCOOR_PAYLOAD_CODECS names hsm, but no HSM"):
        host.make_codec(load_settings(payload_codecs="hsm"))
    # A value sealed with it elsewhere is refused by a process that cannot build it.
    with pytest.raises(DecodeError, match="hsm is not available here: no HSM attached"):
        host.make_codec(load_settings()).open(Opaque(JSON, b"x", "hsm"))


# -- end to end ------------------------------------------------------------------------------


FAST: dict[str, Any] = {
    "lease_seconds": 2.0,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.05,
    "poll_seconds": 0.05,
    "shutdown_grace": 2.0,
}


def _registry() -> TaskRegistry:
    registry = TaskRegistry()

    def echo(value: Any) -> Any:
        return value

    def stretch(text: str, times: int) -> dict[str, Any]:
        return {"text": text * times, "times": times}

    registry.register("codecs.echo", echo)
    registry.register("codecs.stretch", stretch)
    return registry


def _url(scheme: str, tmp_path: Path) -> str:
    test_url = HOST.brokers.entries[scheme].test_url
    assert test_url is not None
    return test_url(tmp_path)


Managers = Callable[..., TaskManager]


@pytest.fixture
async def managers(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Managers]:
    """Factory: ``managers(payload_codecs=...)`` gives a manager on this test's backend;
    for a backend other than memory, every one shares the same tasks (processes)."""
    scheme: str = request.param
    url = _url(scheme, tmp_path)
    registry = _registry()
    made: list[TaskManager] = []

    def make(**overrides: Any) -> TaskManager:
        if scheme == "memory" and made:
            raise AssertionError("memory backends are one manager's own")
        manager = TaskManager(
            registry=registry, broker_url=url, storage_url=url, **FAST, **overrides
        )
        made.append(manager)
        return manager

    yield make
    for manager in reversed(made):
        await manager.close()


SERVERS = [pytest.param(s, marks=pytest.mark.server) for s in ("redis", "postgresql")]
EVERY_BACKEND = pytest.mark.parametrize(
    "managers", ["memory", "sqlite", *SERVERS], indirect=True, ids=str
)
SHARED_BACKENDS = pytest.mark.parametrize("managers", ["sqlite", *SERVERS], indirect=True, ids=str)


@EVERY_BACKEND
async def test_values_are_sealed_at_rest_and_opened_by_the_worker_and_the_handle(
    managers: Managers,
) -> None:
    manager = managers(payload_codecs="zstd,aesgcm", encryption_keys=keys("k1"))
    handle = await manager.enqueue("codecs.stretch", "secret plan ", 300)
    stored = await manager.get(handle.id)
    assert isinstance(stored.payload, Opaque)
    assert stored.payload.codecs == "aesgcm:k1"  # small: encrypted, not compressed
    assert b"secret plan" not in stored.model_dump_json().encode()
    assert await manager.drain() == 1
    done = await manager.get(handle.id)
    assert done.status is TaskStatus.SUCCEEDED, done.error
    assert isinstance(done.result, Opaque)
    assert done.result.codecs == "zstd,aesgcm:k1"
    assert b"secret plan" not in done.model_dump_json().encode()
    assert await handle.result(timeout=5) == {"text": "secret plan " * 300, "times": 300}


@SHARED_BACKENDS
async def test_rotation_across_processes_and_a_worker_lacking_the_new_key(
    managers: Managers,
) -> None:
    old = managers(payload_codecs="aesgcm", encryption_keys=keys("k1"))
    new = managers(payload_codecs="aesgcm", encryption_keys=keys("k1", "k2"))
    before = await old.enqueue("codecs.echo", "sealed with k1")
    after = await new.enqueue("codecs.echo", "sealed with k2")
    assert (await new.get(after.id)).payload.codecs == "aesgcm:k2"
    # The worker that has not been given k2 yet: it runs the k1 task and dead-letters the
    # k2 one with a reason naming the key, and goes on.
    assert await old.drain() == 2
    assert await before.result(timeout=5) == "sealed with k1"
    lost = await old.get(after.id)
    assert lost.status is TaskStatus.DEAD
    (letter,) = await old.broker.dead_letters("default")
    assert letter.id == after.id
    assert letter.reason.startswith("bad payload: task 'codecs.echo': refused value sealed")
    assert "encrypted (key k2), which this process does not hold" in letter.reason
    # Given k2, a worker runs it (requeued); the new manager opens every result.
    assert await new.requeue_dead("default") == [after.id]
    assert await new.drain() == 1
    assert await new.handle(after.id).result(timeout=5) == "sealed with k2"
    assert await new.handle(before.id).result(timeout=5) == "sealed with k1"


@SHARED_BACKENDS
async def test_an_encrypted_result_a_process_cannot_open_is_a_decode_error(
    managers: Managers,
) -> None:
    worker = managers(payload_codecs="aesgcm", encryption_keys=keys("k1", "k2"))
    reader = managers(payload_codecs="aesgcm", encryption_keys=keys("k1"))
    handle = await worker.enqueue("codecs.echo", "for k2 holders")
    await worker.drain()
    with pytest.raises(DecodeError, match=r"encrypted \(key k2\)"):
        await reader.handle(handle.id).result(timeout=5)
    assert await worker.handle(handle.id).result(timeout=5) == "for k2 holders"


def _tampered(value: Opaque) -> Opaque:
    return _flipped(value, len(value.data) // 2)


def _rekeyed(value: Opaque) -> Opaque:
    return Opaque(value.content_type, value.data, value.codecs.replace("aesgcm:k1", "aesgcm:k2"))


def _bomb(_: Opaque) -> Opaque:
    data = zstandard.ZstdCompressor().compress(b'["' + b"a" * 20_000_000 + b'"]')
    return Opaque(JSON, data, "zstd")


@EVERY_BACKEND
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_tampered, r"encrypted \(key k1\) but fails authentication"),
        (_rekeyed, r"encrypted \(key k2\) but fails authentication"),
        (_bomb, r"decompresses to more than 1048576 bytes"),
    ],
    ids=["flipped-byte", "changed-key-id", "bomb"],
)
async def test_a_damaged_value_is_dead_lettered_unrun(
    managers: Managers, damage: Callable[[Opaque], Opaque], reason: str
) -> None:
    manager = managers(payload_codecs="zstd,aesgcm", encryption_keys=keys("k1", "k2"))
    task = manager.build_task("codecs.echo", [BIG_TEXT])
    sealed = SEALING.seal(task.payload)  # by a producer whose newest key is k1
    assert sealed.codecs == "zstd,aesgcm:k1"
    assert manager.broker.codec.open(sealed) == task.payload  # undamaged, it opens
    task.payload = damage(sealed)
    handle = await manager.submit(task)  # already sealed: carried as it is
    assert await manager.drain() == 1
    record = await manager.get(handle.id)
    assert record.status is TaskStatus.DEAD
    assert record.attempts == 1
    (letter,) = await manager.broker.dead_letters("default")
    assert letter.reason.startswith("bad payload:")
    assert re.search(reason, letter.reason), letter.reason


@EVERY_BACKEND
async def test_a_message_fitting_only_compressed_runs(managers: Managers) -> None:
    manager = managers(payload_codecs="zstd", max_payload_bytes=2048)
    task = manager.build_task("codecs.echo", ["w" * 1500])
    task.headers["trace"] = "t" * 700
    handle = await manager.submit(task)
    await manager.drain()
    assert await handle.result(timeout=5) == "w" * 1500


@EVERY_BACKEND
async def test_a_result_over_the_limit_sealed_is_dead_lettered(managers: Managers) -> None:
    manager = managers(payload_codecs="aesgcm", encryption_keys=keys("k1"), max_result_bytes=4096)
    noise = base64.b64encode(os.urandom(2700)).decode()
    handle = await manager.enqueue("codecs.echo", noise)
    await manager.drain()
    record = await manager.get(handle.id)
    assert record.status is TaskStatus.DEAD
    assert record.error is not None
    assert "returned a result of" in record.error
    assert "BGCOOR_MAX_RESULT_BYTES" in record.error


async def test_secrets_stay_out_of_logs(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    wait_until: Callable[..., Any],
) -> None:
    url = f"sqlite:///{tmp_path}/logs.db"
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("BGCOOR_ENCRYPTION_KEYS", keys("k1", "k2"))
    registry = _registry()
    producer = TaskManager(
        registry=registry, broker_url=url, storage_url=url, payload_codecs="zstd,aesgcm", **FAST
    )
    monkeypatch.setenv("BGCOOR_ENCRYPTION_KEYS", keys("k1"))
    worker = TaskManager(
        registry=registry, broker_url=url, storage_url=url, payload_codecs="aesgcm", **FAST
    )
    try:
        await producer.enqueue("codecs.echo", BIG_TEXT)
        async with worker.worker(concurrency=1) as pool:
            logging.getLogger("bgcoor.test").info("settings %r, pool %r", worker.settings, pool)
            await wait_until(lambda: _has_dead_letters(worker), timeout=10)
        with pytest.raises(SettingsError) as caught:
            load_settings(encryption_keys=f"{keys('k1')},k9:{KEYS['k2'][:-4]}")
        logging.getLogger("bgcoor.test").error("%s", caught.value)
    finally:
        await producer.close()
        await worker.close()
    assert "key k2" in caplog.text  # the dead letter was logged, naming the key id
    assert _secrets_absent(caplog.text)


async def _has_dead_letters(manager: TaskManager) -> bool:
    return bool(await manager.broker.dead_letters("default"))
