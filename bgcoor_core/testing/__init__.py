"""The conformance suite every broker and storage must pass, shipped with the package.

A backend passes it by subclassing and providing one fixture::

    import pytest_asyncio
    from bgcoor_core.testing import BrokerContract, make_test_codec

    class TestMyBroker(BrokerContract):
        @pytest_asyncio.fixture
        async def broker(self):
            broker = MyBroker(make_test_codec())
            yield broker
            await broker.close()

For multi-process tests, :class:`WorkerFleet` runs real worker processes against a
backend URL and records every task run in a ledger.

Importing this package needs pytest and pytest-asyncio (the ``test`` extra).
"""

from ._broker_contract import BrokerContract
from ._fleet import Run, WorkerFleet, ledger_task
from ._gate_contract import GateContract
from ._helpers import EARLY, LEASE, LONG_LEASE, SLACK, make_task, make_test_codec
from ._queue_limit_contract import QueueLimitContract, check_a_manager_rejects_or_waits_for_room
from ._schedule_contract import ScheduleContract
from ._storage_contract import StorageContract
from ._unique_contract import UniqueContract
from ._workflow_contract import WorkflowContract

__all__ = [
    "EARLY",
    "LEASE",
    "LONG_LEASE",
    "SLACK",
    "BrokerContract",
    "GateContract",
    "QueueLimitContract",
    "Run",
    "ScheduleContract",
    "StorageContract",
    "UniqueContract",
    "WorkerFleet",
    "WorkflowContract",
    "check_a_manager_rejects_or_waits_for_room",
    "ledger_task",
    "make_task",
    "make_test_codec",
]
