"""Every broker and storage that a plugin registers with a ``test_url`` passes the shared
conformance suite (``bgcoor_core.testing``). New plugins show up here without edits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bgcoor_core import (
    BackendContext,
    Broker,
    MemoryBroker,
    Settings,
    Storage,
    build_plugin_host,
)
from bgcoor_core.testing import (
    BrokerContract,
    GateContract,
    QueueLimitContract,
    ScheduleContract,
    StorageContract,
    UniqueContract,
    WorkflowContract,
    make_test_codec,
)

HOST = build_plugin_host()
BROKER_SCHEMES = sorted(s for s, e in HOST.brokers.entries.items() if e.test_url is not None)
STORAGE_SCHEMES = sorted(s for s, e in HOST.storages.entries.items() if e.test_url is not None)


def _context() -> BackendContext:
    return BackendContext(Settings(), make_test_codec())


def _broker_url(scheme: str, tmp_path: Path) -> str:
    test_url = HOST.brokers.entries[scheme].test_url
    assert test_url is not None
    return test_url(tmp_path)


class _Paired:
    """Every broker, with the storage ``make_backends`` pairs it with: the broker itself,
    or the same-URL storage."""

    @pytest.fixture(params=BROKER_SCHEMES, ids=str)
    def broker_url(self, request: pytest.FixtureRequest, tmp_path: Path) -> str:
        return _broker_url(request.param, tmp_path)

    @pytest.fixture
    async def broker(self, broker_url: str) -> AsyncIterator[Broker]:
        broker = HOST.brokers.lookup(broker_url).factory(broker_url, _context())
        yield broker
        await broker.close()

    @pytest.fixture
    async def completion_storage(
        self, broker: Broker, broker_url: str
    ) -> AsyncIterator[Storage | None]:
        if isinstance(broker, Storage):
            yield broker
            return
        entry = HOST.storages.entries.get(_scheme(broker_url))
        if entry is None:
            yield None
            return
        storage = entry.factory(broker_url, _context())
        yield storage
        await storage.close()


class TestBrokerConformance(_Paired, BrokerContract):
    """Every broker."""


class TestStorageConformance(StorageContract):
    @pytest.fixture(params=STORAGE_SCHEMES, ids=str)
    async def storage(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[Storage]:
        entry = HOST.storages.entries[request.param]
        assert entry.test_url is not None
        storage = entry.factory(entry.test_url(tmp_path), _context())
        yield storage
        await storage.close()


class _BareMemoryBroker(MemoryBroker):
    """The memory broker declaring no optional capability: proves the suite's
    capability-gated tests skip cleanly and the rest never lean on an optional one."""

    capabilities = frozenset()


class TestBrokerConformanceWithoutCapabilities(BrokerContract):
    @pytest.fixture
    async def broker(self) -> AsyncIterator[Broker]:
        broker = _BareMemoryBroker(make_test_codec())
        yield broker
        await broker.close()


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


class TestScheduleConformance(_Paired, ScheduleContract):
    """Every broker's schedule store."""


class TestUniqueConformance(_Paired, UniqueContract):
    """Every pair that takes unique keys."""


class TestGateConformance(_Paired, GateContract):
    """Every broker that enforces rate and concurrency limits."""


class TestQueueLimitConformance(_Paired, QueueLimitContract):
    """Every pair that enforces queue limits."""


class TestWorkflowConformance(_Paired, WorkflowContract):
    """Every broker's workflow store."""
