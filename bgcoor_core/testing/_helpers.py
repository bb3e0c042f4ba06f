"""Timing constants, a test codec and small helpers shared by the conformance suites."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from .._broker import Broker, Capability, Reservation
from .._codec import JSON, Codec, JsonSerializer, Serializer
from .._task import Task
from ..serializers import PickleSerializer

T = TypeVar("T")

#: Every contract test is a coroutine; marked explicitly so that projects running
#: pytest-asyncio in strict mode collect them too.
ASYNC = pytest.mark.asyncio

#: A lease a test waits out on purpose: short, so the suite stays fast.
LEASE = 0.2
#: A lease that must not expire while a test runs.
LONG_LEASE = 30.0
#: "Not before X" is checked as ``>= X - EARLY``: clocks and timers are a little coarse.
EARLY = 0.05
#: "By X" is checked as ``<= X + SLACK``: generous, so a loaded machine does not fail it.
SLACK = 2.0

DEFAULT = "default"
#: Small enough that the payload-size test stays cheap, large enough for every other test.
TEST_MAX_PAYLOAD_BYTES = 64 * 1024


def make_test_codec(*, max_payload_bytes: int = TEST_MAX_PAYLOAD_BYTES) -> Codec:
    """The codec to build backends under test with.

    It encodes JSON and knows pickle without accepting it, like a default deployment:
    the suite checks that a pickle body is refused before it is ever unpickled.
    """
    serializers: dict[str, Serializer] = {
        JSON: JsonSerializer(),
        PickleSerializer.content_type: PickleSerializer(),
    }
    return Codec(
        serializers, content_type=JSON, accept=(JSON,), max_payload_bytes=max_payload_bytes
    )


def make_task(name: str = "contract.task", payload: Any = None, **fields: Any) -> Task:
    """A pending task named ``name``; ``fields`` override any other attribute."""
    return Task.new(name, payload, **fields)


def require(broker: Broker, capability: Capability) -> None:
    """Skip the calling test unless ``broker`` declares ``capability``."""
    if capability not in broker.capabilities:
        pytest.skip(f"{type(broker).__name__} does not declare Capability.{capability.name}")


async def reserve_one(
    broker: Broker,
    queues: Sequence[str] = (DEFAULT,),
    *,
    lease: float = LONG_LEASE,
    timeout: float = SLACK,
) -> Reservation:
    """Reserve exactly one task, failing the test when none arrives in ``timeout``."""
    got = await broker.reserve(queues, lease=lease, timeout=timeout)
    assert len(got) == 1, f"expected one reservation from {list(queues)}, got {len(got)}"
    return got[0]


async def drain(broker: Broker, queues: Sequence[str] = (DEFAULT,)) -> list[str]:
    """Reserve and ack one at a time until nothing is ready; the ids in delivery order."""
    ids: list[str] = []
    while got := await broker.reserve(queues, lease=LONG_LEASE, timeout=0):
        for reservation in got:
            ids.append(reservation.task.id)
            await broker.ack(reservation)
    return ids


class Stopwatch:
    """Started before the lease, delay or TTL being tested begins.

    "Not yet" checks run only while ``elapsed`` is below the interval (on a badly stalled
    machine the interval may rightly have passed); "not before" checks compare ``elapsed``
    with the interval, which can only make them more lenient.
    """

    def __init__(self) -> None:
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """Run ``coro`` as a task for the block; cancelled on exit if still running."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
