"""Poison-task quarantine: a task that was there when workers died runs alone.

A task that crashes its worker process (a segfault in an extension, an out-of-memory
kill) takes every task running beside it down too, and each of those deaths counts
against *their* ``max_worker_lost`` as well as its own. So a task redelivered after its
workers were lost often enough to be suspect is run with nothing else in the pool: the
rest of its batch goes back to the broker at once, the running tasks finish, the suspect
runs alone, and only then does the pool reserve again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from ._broker import Reservation


class Isolating(Protocol):
    """What :meth:`Quarantine.run_alone` needs from the pool that holds the suspect."""

    def _holds(self, token: str) -> bool:
        """Whether the reservation with lease ``token`` is still held (not settled)."""
        ...

    def _held_count(self) -> int:
        """Reservations held: running, waiting for a slot, or neither yet."""
        ...

    async def _give_back(self, reservations: list[Reservation]) -> None:
        """Hand back held reservations that never started."""
        ...

    async def _wait_for_room(self) -> None:
        """Return once some held reservation has been released."""
        ...

    def _start_alone(self, reservation: Reservation) -> None:
        """Start running ``reservation`` now (it is held but neither running nor waiting)."""
        ...


class Quarantine:
    """The rule deciding which reservation is suspect, and running one alone."""

    def __init__(self, max_worker_lost: int) -> None:
        # One death proves nothing: after a plain crash, every task the dead worker held
        # comes back with ``lost == 1`` and must not crawl through one at a time. A poison
        # task takes a second worker down with it before it is run alone, so the tasks
        # beside it lose two lives at most, fewer than ``max_worker_lost`` allows.
        self.threshold = max(1, min(2, max_worker_lost))

    def is_suspect(self, reservation: Reservation, held: Iterable[Reservation]) -> bool:
        """Its workers were lost ``threshold`` times, and not to a lease that lapsed in
        this very pool (which would still be running the earlier delivery, in ``held``)."""
        return reservation.lost >= self.threshold and not any(
            other.task.id == reservation.task.id and other is not reservation for other in held
        )

    def suspect_in(
        self, batch: Sequence[Reservation], held: Callable[[], Iterable[Reservation]]
    ) -> Reservation | None:
        """The first suspect of a freshly reserved ``batch``; ``held()`` lists what the
        pool holds, ``batch`` included. It is only called when a task in ``batch`` was
        lost often enough: the common batch costs one pass over its counters."""
        if all(r.lost < self.threshold for r in batch):
            return None
        everything = list(held())
        return next((r for r in batch if self.is_suspect(r, everything)), None)

    async def run_alone(
        self, suspect: Reservation, batch: Sequence[Reservation], pool: Isolating
    ) -> None:
        """Give back the rest of ``batch``, wait until ``suspect`` is the only task held,
        run it, and return once it is settled."""
        others = [r for r in batch if r is not suspect]
        try:
            await pool._give_back(others)
            while pool._held_count() > 1:
                await pool._wait_for_room()
        except asyncio.CancelledError:  # shutting down before it started: hand it back
            await asyncio.shield(pool._give_back([*others, suspect]))
            raise
        pool._start_alone(suspect)
        while pool._holds(suspect.token):
            await pool._wait_for_room()
