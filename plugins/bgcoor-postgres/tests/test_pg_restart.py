"""A PostgreSQL restart during a run is survived: a private server, never the shared one.

The test starts its own cluster (``initdb`` into a temporary folder, ``pg_ctl`` on a free
port, run as the ``postgres`` OS user because initdb refuses root), restarts it while a
worker is busy, and checks that every task finished and no stored result was lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bgcoor_core import Settings, TaskManager, TaskStatus

pytestmark = [pytest.mark.server, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_postgres(*argv: str) -> list[str]:
    return argv if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *argv]


class PrivateServer:
    """A throw-away cluster owned by this test; only it is ever stopped or restarted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.url = f"postgresql://root@127.0.0.1:{self.port}/postgres"

    def _pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _as_postgres(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.root / "log"),
                "-o",
                options,
                "-w",
                *args,
            ),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def init(self) -> None:
        subprocess.run(
            _as_postgres("initdb", "-D", str(self.data), "-U", "root", "--auth=trust"),
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._pg_ctl("start")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "restart")

    def stop(self) -> None:
        self._pg_ctl("-m", "immediate", "stop")


@pytest.fixture
def server() -> Iterator[PrivateServer]:
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("initdb/pg_ctl not found")
        pytest.skip("initdb/pg_ctl not found")
    # not under pytest's tmp_path: its parents are private to root, and the server runs
    # as the postgres user
    root = Path(tempfile.mkdtemp(prefix="bgcoor-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PrivateServer(root)
    try:
        server.init()
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_restart_during_a_run_loses_nothing(
    server: PrivateServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "bgcoor.postgres")
    url = f"{server.url}?schema=bgcoor&reconnect_timeout=30&poll_interval=0.2"
    manager = TaskManager(
        Settings(
            broker_url=url,
            storage_url=url,
            lease_seconds=3.0,
            poll_seconds=0.2,
            retry_backoff=0.01,
            retry_backoff_max=0.05,
            shutdown_grace=5.0,
        )
    )
    n = 400
    runs: Counter[int] = Counter()
    quarter = asyncio.Event()

    @manager.task(name="work")
    async def work(i: int) -> int:
        runs[i] += 1
        if sum(runs.values()) >= n // 4:
            quarter.set()
        await asyncio.sleep(0.01)
        return i * i

    handles = await work.enqueue_many([(i,) for i in range(n)])
    try:
        async with manager.worker(concurrency=8):
            await asyncio.wait_for(quarter.wait(), 20)
            before = {
                h.id
                for h in handles
                if (await manager.storage.get(h.id)).status  # type: ignore[union-attr]
                is TaskStatus.SUCCEEDED
            }
            assert 0 < len(before) < n, "the restart should come mid-run"
            restarted = time.monotonic()
            await asyncio.to_thread(server.restart)
            results = [await h.result(timeout=40) for h in handles]
            took = time.monotonic() - restarted
        assert results == [i * i for i in range(n)]
        counts = await manager.storage.counts()
        assert counts[TaskStatus.SUCCEEDED] == n, counts
        assert set(runs) == set(range(n)), "tasks lost"
        # a task whose outcome was stored before the restart never ran again
        redone = [i for i, h in enumerate(handles) if h.id in before and runs[i] > 1]
        assert redone == []
        assert took < 35
        assert "connection lost" in caplog.text or "unreachable" in caplog.text
    finally:
        await manager.close()
