"""The broker conformance suite: one base class made of the parts in sibling modules."""

from __future__ import annotations

from ._broker_concurrency import BrokerConcurrencyTests
from ._broker_delivery import BrokerDeliveryTests
from ._broker_leases import BrokerLeaseTests
from ._broker_records import BrokerRecordTests
from ._helpers import ASYNC


# pytest collects the most basic class first: listed in reverse so the report reads
# delivery, leases, records, concurrency.
class BrokerContract(
    BrokerConcurrencyTests, BrokerRecordTests, BrokerLeaseTests, BrokerDeliveryTests
):
    """Base class of the broker conformance tests.

    Subclass it in a module pytest collects (name the subclass ``Test...``) and provide
    one fixture, ``broker``, yielding a fresh, empty :class:`~bgcoor_core.Broker` and
    closing it afterwards. Build the broker with :func:`make_test_codec`. Tests of an
    optional :class:`~bgcoor_core.Capability` skip when the broker does not declare it.

    A broker implementing :class:`~bgcoor_core.AtomicCompletion` whose storage is not the
    broker object itself also overrides the ``completion_storage`` fixture.
    """

    pytestmark = [ASYNC]
