"""Cancel signals over PostgreSQL NOTIFY/LISTEN (issue 14, item 5): the plugin's
``bgcoor_cancel_signals`` hook, delivery to every listener of the schema (and nobody
else's), a LISTEN that comes back after its connection is terminated, and a worker pool
interrupting a task that another manager (another process, for all it knows) cancels.
Across real OS processes: ``tests/reliability/test_cancel_across_processes.py``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from bgcoor_postgres import PostgresBackend, parse_postgres_url
from bgcoor_postgres._cancels import PostgresCancelSignals

from bgcoor_core import MemoryBroker, MemoryStorage, build_plugin_host
from bgcoor_core.testing import make_test_codec
from bgcoor_core.testing.cancel_channel import (
    check_a_pool_interrupts_a_task_cancelled_elsewhere,
    check_a_signal_reaches_its_channel_only,
    listening,
)

pytestmark = pytest.mark.server


def signals_of(backend: PostgresBackend) -> PostgresCancelSignals:
    signals = build_plugin_host().cancel_signals(backend, backend)
    assert isinstance(signals, PostgresCancelSignals)
    return signals


async def test_the_plugin_offers_notify_for_its_own_brokers_only(
    backend: PostgresBackend,
) -> None:
    signals = signals_of(backend)  # the bgcoor_cancel_signals hook
    assert signals.channel == f"{backend.target.schema}_cancel"
    codec = make_test_codec()
    assert build_plugin_host().cancel_signals(MemoryBroker(codec), MemoryStorage(codec)) is None


async def test_a_notified_id_reaches_every_listener_of_the_schema_only(
    backend: PostgresBackend, pg_url: Callable[..., str]
) -> None:
    elsewhere = PostgresBackend(backend.target, make_test_codec())  # another process's
    other_schema = PostgresBackend(parse_postgres_url(pg_url()), make_test_codec())
    try:
        await check_a_signal_reaches_its_channel_only(
            signals_of(backend), signals_of(elsewhere), signals_of(other_schema)
        )
    finally:
        await elsewhere.close()
        await other_schema.close()


async def test_a_listen_comes_back_after_its_connection_is_terminated(
    backend: PostgresBackend, raw: asyncpg.Connection[Any]
) -> None:
    signals = signals_of(backend)
    async with listening(signals) as heard:
        statement = f'LISTEN "{signals.channel}"'
        killed = await raw.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query = $1",
            statement,
        )
        assert killed == 1
        await heard.until("gaps", 2)  # listening again, and told the pool to look
        assert signals.subscriptions == 2
        await signals.publish("after")
        await heard.until("ids", 1)
    assert heard.ids == ["after"]


async def test_a_pool_interrupts_a_task_cancelled_by_another_manager(
    pg_url: Callable[..., str],
) -> None:
    await check_a_pool_interrupts_a_task_cancelled_elsewhere(pg_url())
