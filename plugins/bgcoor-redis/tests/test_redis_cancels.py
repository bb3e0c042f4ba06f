"""Cancel signals over Redis PUBLISH/SUBSCRIBE (issue 14, item 5): the plugin's
``bgcoor_cancel_signals`` hook, delivery to every subscriber of the prefix (and nobody
else's), a subscription that comes back after its connection is killed, and a worker pool
interrupting a task that another manager (another process, for all it knows) cancels.
Across real OS processes: ``tests/reliability/test_cancel_across_processes.py``."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from bgcoor_redis import RedisBackend
from bgcoor_redis._cancels import RedisCancelSignals
from bgcoor_redis._testing import server_url, test_url

from bgcoor_core import MemoryBroker, MemoryStorage, build_plugin_host
from bgcoor_core.testing import make_test_codec
from bgcoor_core.testing.cancel_channel import (
    check_a_pool_interrupts_a_task_cancelled_elsewhere,
    check_a_signal_reaches_its_channel_only,
    listening,
)

pytestmark = pytest.mark.server


async def test_the_plugin_offers_pubsub_for_its_own_brokers_only(backend: RedisBackend) -> None:
    host = build_plugin_host()
    signals = host.cancel_signals(backend, backend)  # the bgcoor_cancel_signals hook
    assert isinstance(signals, RedisCancelSignals)
    assert signals.channel == f"{backend.prefix}:cancel"
    codec = make_test_codec()
    assert host.cancel_signals(MemoryBroker(codec), MemoryStorage(codec)) is None


async def test_a_published_id_reaches_every_subscriber_of_the_prefix_only(
    backend: RedisBackend, tmp_path: Path
) -> None:
    elsewhere = RedisBackend(backend.target.url, make_test_codec())  # another process's
    other_prefix = RedisBackend(test_url(tmp_path / "other"), make_test_codec())
    try:
        await check_a_signal_reaches_its_channel_only(
            RedisCancelSignals(backend),
            RedisCancelSignals(elsewhere),
            RedisCancelSignals(other_prefix),
        )
    finally:
        await elsewhere.close()
        await other_prefix.close()


async def test_a_subscription_comes_back_after_its_connection_is_killed(
    redis_url: str,
) -> None:
    name = f"cancels-{uuid.uuid4().hex[:8]}"
    backend = RedisBackend(f"{redis_url}&client_name={name}", make_test_codec())
    admin = aioredis.Redis.from_url(server_url())
    try:
        signals = RedisCancelSignals(backend)
        async with listening(signals) as heard:
            clients = await admin.client_list()
            [ours] = [c for c in clients if c.get("name") == name and int(c.get("sub", 0)) > 0]
            await admin.client_kill_filter(_id=ours["id"])
            await heard.until("gaps", 2)  # resubscribed, and told the pool to look
            assert signals.subscriptions == 2
            await RedisCancelSignals(backend).publish("after")
            await heard.until("ids", 1)
        assert heard.ids == ["after"]
    finally:
        await admin.aclose()
        await backend.close()


async def test_a_pool_interrupts_a_task_cancelled_by_another_manager(redis_url: str) -> None:
    await check_a_pool_interrupts_a_task_cancelled_elsewhere(redis_url)


async def test_a_quiet_subscription_is_pinged_and_kept(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bgcoor_redis._cancels.PING_AFTER", 0.05)
    signals = RedisCancelSignals(backend)
    async with listening(signals) as heard:
        await asyncio.sleep(0.5)  # ten quiet spells, each ended by a PING and its answer
        await signals.publish("later")
        await heard.until("ids", 1)
    assert (signals.subscriptions, heard.gaps, heard.ids) == (1, 1, ["later"])
