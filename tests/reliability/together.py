"""Run the cases of one parametrised test at the same time, each still its own test.

A reliability run spends much of its time waiting (on a clock, a lease, a worker starting
up), and runs on different backends, or in rigs of their own, share nothing (each has its
own SQLite file, Redis key prefix or PostgreSQL schema). :class:`Together` starts the
cases of every test item the session selected as soon as the first of them asks, each
in an event loop of its own on a thread of its own (``width`` at a time, in the items'
order), and each test awaits its own case's result: it passes, fails or raises exactly
as if it had run its case alone.

Only for runs whose checks do not time the machine: a run that measures a rate or a
fairness (``test_limits.py``) stays alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from .backends import BACKENDS, Backend

T = TypeVar("T")

#: ``case(key, workdir)``: one case's run in a folder of its own; its return value or
#: exception is the test's.
Case = Callable[[str, Path], Coroutine[Any, Any, T]]
#: ``key_of(item)``: the case a selected test item runs (``None``: nothing to start for
#: it, such as a backend that cannot run here; its own test skips or fails).
KeyOf = Callable[[pytest.Function], str | None]


def backend_of(item: pytest.Function) -> str | None:
    """The item's ``backend`` parameter (a :class:`Backend` or its name) if it can run."""
    param = item.callspec.params.get("backend")
    name = param.name if isinstance(param, Backend) else param
    if isinstance(name, str) and name in BACKENDS and BACKENDS[name].unavailable() is None:
        return name
    return None


class Together(Generic[T]):
    """The runs of one test's cases, by key (by default the backend's name)."""

    def __init__(self, case: Case[T], key_of: KeyOf = backend_of, width: int = 0) -> None:
        self.case = case
        self.key_of = key_of
        self.width = width  # 0: every case at once
        self._runs: dict[str, concurrent.futures.Future[T]] = {}

    async def result(self, request: pytest.FixtureRequest, key: str) -> T:
        """``key``'s result: starts the cases of the selected items not started yet
        (``key`` among them), then waits for this one's."""
        keys = [k for k in self._selected(request) if k not in self._runs]
        if key not in self._runs and key not in keys:  # not found among the selected
            keys.append(key)
        self._start(request, keys)
        return await asyncio.wrap_future(self._runs[key])

    def _selected(self, request: pytest.FixtureRequest) -> list[str]:
        node = request.node
        keys: list[str] = []
        for item in request.session.items:
            if not isinstance(item, pytest.Function) or item.path != node.path:
                continue
            if item.originalname != node.originalname:
                continue
            key = self.key_of(item)
            if key is not None and key not in keys:
                keys.append(key)
        return keys

    def _start(self, request: pytest.FixtureRequest, keys: list[str]) -> None:
        if not keys:
            return
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        prefix = request.node.originalname.removeprefix("test_")[:24]
        workdirs = {key: factory.mktemp(f"{prefix}-{key}"[:60]) for key in keys}
        futures = {key: concurrent.futures.Future[T]() for key in keys}
        self._runs.update(futures)
        pending: queue.SimpleQueue[str] = queue.SimpleQueue()
        for key in keys:
            pending.put(key)

        def work() -> None:  # one lane: the cases it takes, one after another, in order
            while True:
                try:
                    key = pending.get_nowait()
                except queue.Empty:
                    return
                try:
                    futures[key].set_result(asyncio.run(self.case(key, workdirs[key])))
                except BaseException as exc:  # handed to the test that awaits it
                    futures[key].set_exception(exc)

        for lane in range(min(self.width or len(keys), len(keys))):
            threading.Thread(target=work, name=f"together-{prefix}-{lane}", daemon=True).start()
