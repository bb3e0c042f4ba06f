"""The Redis schedule store beyond the shared ScheduleContract (which tests/test_conformance.py
runs for the ``redis`` scheme): its keys, unreadable entries, round trips per batch, and
firing one tick from two backends (two connections) at once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aredis
from bgcoor_redis import RedisBackend
from bgcoor_redis._schedules import FIRE_CHUNK
from bgcoor_redis._scripts import Script

from bgcoor_core import (
    Backends,
    DuplicateTaskError,
    Fire,
    FireOutcome,
    ScheduleDefinition,
    Task,
    TaskStatus,
)
from bgcoor_core.testing import make_task, make_test_codec

pytestmark = pytest.mark.server

Q = "default"
T0 = 1_790_000_000_000


def definition(schedule_id: str) -> ScheduleDefinition:
    return ScheduleDefinition(id=schedule_id, task="periodic", every_ms=1000)


def request(backend: RedisBackend, schedule_id: str, tick_ms: int, **fields: object) -> Fire:
    task = make_task("periodic", **fields)
    return Fire(schedule_id, tick_ms, task, backend.to_message(task))


def fired_task(request: Fire) -> Task:
    assert request.task is not None
    return request.task


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aredis.Redis]:
    client = aredis.Redis.from_url(redis_url.split("?", 1)[0])
    yield client
    await client.aclose()


async def test_the_backend_is_its_own_schedule_store(backend: RedisBackend) -> None:
    assert Backends.pair(backend, backend).schedules is backend


async def test_schedule_keys_stay_apart_from_queues_and_records(
    backend: RedisBackend, raw: aredis.Redis
) -> None:
    # ids that look like other keys' tails cannot reach them
    ids = ["q:default:ready", "t:x", "m", "i:all"]
    await backend.put_schedules([definition(i) for i in ids])
    fires = [request(backend, i, T0) for i in ids]
    assert await backend.fire(fires) == [FireOutcome.FIRED] * 4
    keys = {k.decode() async for k in raw.scan_iter(f"{backend.prefix}:sched*")}
    assert keys == {backend.key("sched")} | {backend.key("sched", i) for i in ids}
    assert await raw.type(backend.key("q", Q, "ready")) == b"zset"
    assert (await backend.counts())[TaskStatus.PENDING] == 4  # the fired tasks only
    assert await backend.purge(Q) == 4
    assert [e.id for e in await backend.get_schedules()] == sorted(ids)  # purge kept them


async def test_a_corrupt_definition_is_skipped_with_a_warning(
    backend: RedisBackend, raw: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.put_schedules([definition(i) for i in ("a-good", "b-bad", "c-junk", "d-good")])
    await raw.hset(backend.key("sched", "b-bad"), "def", b"{not json")
    await raw.delete(backend.key("sched", "c-junk"))
    await raw.set(backend.key("sched", "c-junk"), "junk")  # not even a hash
    with caplog.at_level(logging.WARNING, logger="bgcoor.redis"):
        entries = await backend.get_schedules()
    assert [e.id for e in entries] == ["a-good", "d-good"]
    assert "'b-bad' skipped" in caplog.text
    assert "'c-junk' skipped" in caplog.text
    # a corrupt definition does not stop its ticks; an unreadable entry fires nothing
    fires = [request(backend, i, T0) for i in ("b-bad", "c-junk")]
    assert await backend.fire(fires) == [FireOutcome.FIRED, FireOutcome.REMOVED]
    # an upsert repairs both, keeping what state there is
    await backend.put_schedules([definition("b-bad"), definition("c-junk")])
    states = {e.id: e.state for e in await backend.get_schedules()}
    assert list(states) == ["a-good", "b-bad", "c-junk", "d-good"]
    assert (states["b-bad"].last_tick_ms, states["b-bad"].fired) == (T0, 1)
    assert (states["c-junk"].last_tick_ms, states["c-junk"].fired) == (None, 0)


async def test_unreadable_state_fields_skip_only_that_entry(
    backend: RedisBackend, raw: aredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    await backend.put_schedules([definition("a"), definition("b")])
    await raw.hset(backend.key("sched", "a"), "fired", "lots")
    with caplog.at_level(logging.WARNING, logger="bgcoor.redis"):
        assert [e.id for e in await backend.get_schedules()] == ["b"]
    assert "'a' skipped" in caplog.text
    # firing restarts the counter rather than failing
    assert await backend.fire([request(backend, "a", T0)]) == [FireOutcome.FIRED]
    assert {e.id: e.state.fired for e in await backend.get_schedules()} == {"a": 1, "b": 0}


async def test_a_batch_of_a_thousand_fires_is_one_round_trip(backend: RedisBackend) -> None:
    ids = [f"s{n:04}" for n in range(1000)]
    await backend.put_schedules([definition(i) for i in ids])
    fires = [request(backend, i, T0) for i in ids]
    link = backend.link()
    trips, commands = link.round_trips, link.commands
    outcomes = await backend.fire(fires)
    assert link.round_trips - trips == 1
    assert link.commands - commands == -(-1000 // FIRE_CHUNK)  # one script call per chunk
    assert outcomes == [FireOutcome.FIRED] * 1000
    assert (await backend.stats(Q)).ready == 1000
    states = {e.id: e.state for e in await backend.get_schedules()}
    assert all(states[i].last_task_id == fired_task(f).id for i, f in zip(ids, fires, strict=True))


async def test_chunks_run_in_order_when_the_script_is_not_cached(backend: RedisBackend) -> None:
    # a source of its own, so that the server has not cached it (as after a restart),
    # without flushing the script cache that other tests on this server use
    script = backend._scripts["fire"]
    source = script.source + f"\n-- {uuid.uuid4().hex}".encode()
    backend._scripts = {
        **backend._scripts,
        "fire": Script("fire", source, hashlib.sha1(source).hexdigest()),
    }
    await backend.put_schedules([definition("s")])
    # the same schedule in every chunk: only the first request of the batch fires
    fires = [request(backend, "s", T0) for _ in range(2 * FIRE_CHUNK + 1)]
    link = backend.link()
    commands = link.commands
    outcomes = await backend.fire(fires)
    assert link.commands - commands == 3 + 1 + 3  # 3 refused, SCRIPT LOAD, 3 run in turn
    assert outcomes == [FireOutcome.FIRED] + [FireOutcome.ALREADY] * (2 * FIRE_CHUNK)
    (entry,) = await backend.get_schedules()
    assert entry.state.last_task_id == fired_task(fires[0]).id


async def test_two_backends_firing_one_tick_enqueue_it_once(redis_url: str) -> None:
    first = RedisBackend(redis_url, make_test_codec())
    second = RedisBackend(redis_url, make_test_codec())
    try:
        await first.put_schedules([definition("race")])
        fires = [(b, request(b, "race", T0)) for _ in range(50) for b in (first, second)]
        outcomes = await asyncio.gather(*(b.fire([f]) for b, f in fires))
        flat = [o for pair in outcomes for o in pair]
        assert flat.count(FireOutcome.FIRED) == 1
        assert flat.count(FireOutcome.ALREADY) == 99
        # each backend sent its fires over its own connection
        assert first.link().round_trips > 0
        assert second.link().round_trips > 0
        assert (await first.stats(Q)).ready == 1
        (winner,) = [f for (_, f), o in zip(fires, flat, strict=True) if o is FireOutcome.FIRED]
        (entry,) = await second.get_schedules()
        assert (entry.state.fired, entry.state.last_task_id) == (1, fired_task(winner).id)
    finally:
        await first.close()
        await second.close()


async def test_a_fired_task_with_an_eta_waits_in_the_scheduled_set(
    backend: RedisBackend,
) -> None:
    await backend.put_schedules([definition("later")])
    fire = request(backend, "later", T0, eta=datetime.now(UTC) + timedelta(hours=1))
    assert await backend.fire([fire]) == [FireOutcome.FIRED]
    stats = await backend.stats(Q)
    assert (stats.ready, stats.scheduled) == (0, 1)


async def test_a_taken_task_id_is_refused_and_changes_nothing(backend: RedisBackend) -> None:
    await backend.put_schedules([definition("a"), definition("b")])
    existing = make_task("periodic")
    await backend.save(existing)
    clash = Fire("a", T0, existing, backend.to_message(existing))
    other = request(backend, "b", T0)
    with pytest.raises(DuplicateTaskError, match=existing.id):
        await backend.fire([clash, other])
    states = {e.id: e.state for e in await backend.get_schedules()}
    assert (states["a"].last_tick_ms, states["a"].fired) == (None, 0)  # untouched
    assert (states["b"].last_tick_ms, states["b"].fired) == (T0, 1)  # applied
    assert (await backend.stats(Q)).ready == 1


async def test_a_request_is_checked_before_anything_is_sent(backend: RedisBackend) -> None:
    await backend.put_schedules([definition("a")])
    task = make_task("periodic")
    good = request(backend, "a", T0)
    with pytest.raises(ValueError, match="both task and message"):
        await backend.fire([good, Fire("a", T0 + 1000, task, None)])
    with pytest.raises(ValueError, match="release needs the task"):
        await backend.fire([good, Fire("a", T0, None, None, release=True)])
    (entry,) = await backend.get_schedules()
    assert entry.state.last_tick_ms is None
