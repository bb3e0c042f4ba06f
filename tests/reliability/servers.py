"""Private Redis and PostgreSQL servers for the scenarios that restart or reconfigure a
server (9 and 11): each on a free loopback port with its files in a folder of its own,
stopped by its own PID or data folder. The shared servers are never touched."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol


class Unavailable(Exception):
    """The tools to run a private server of this kind are not installed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


def _wait_listening(port: int, up: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _listening(port) != up:
        if time.monotonic() > deadline:
            raise AssertionError(f"port {port} still {'down' if up else 'up'} after {timeout}s")
        time.sleep(0.05)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"{name} is not installed")
    return path


class PrivateServer(Protocol):
    def url(self) -> str: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class PrivateRedis:
    """``redis-server`` with an append-only file synced on every write, so a restart keeps
    everything acknowledged (a Redis without persistence loses its data by design)."""

    def __init__(self, directory: Path, *config: str) -> None:
        self.binary = _binary("redis-server")
        self.directory = directory
        self.port = free_port()
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.prefix = f"rel-{uuid.uuid4().hex[:12]}"
        directory.mkdir(parents=True, exist_ok=True)

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0?prefix={self.prefix}"

    def start(self) -> None:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", *self.config,
        ]  # fmt: skip
        with (self.directory / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _wait_listening(self.port, up=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # by PID: a clean shutdown
            self.proc.wait(timeout=30)
        _wait_listening(self.port, up=False)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class PrivatePostgres:
    """A throw-away cluster (``initdb`` + ``pg_ctl``), run as the ``postgres`` OS user when
    we are root, because initdb refuses root."""

    def __init__(self) -> None:
        self.pg_ctl = _binary("pg_ctl")
        self.initdb = _binary("initdb")
        self.root = Path(tempfile.mkdtemp(prefix="bgcoor-rel-pg-"))
        if os.geteuid() == 0:
            _binary("runuser")
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.schema = f"rel_{uuid.uuid4().hex[:12]}"

    def _run(self, *argv: str) -> None:
        command = list(argv) if os.geteuid() else ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def url(self) -> str:
        return f"postgresql://root@127.0.0.1:{self.port}/postgres?schema={self.schema}"

    def _ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "log")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", log, "-o", options, "-w", *args)

    def start(self) -> None:
        if not self.data.exists():
            self._run(self.initdb, "-D", str(self.data), "-U", "root", "--auth=trust")
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def kill(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def private_server(backend: str, workdir: Path, *config: str) -> Iterator[PrivateServer]:
    """A started private server for ``backend`` (``redis`` or ``postgres``), removed after."""
    server: PrivateRedis | PrivatePostgres
    if backend == "redis":
        server = PrivateRedis(workdir / "redis-server", *config)
    elif backend == "postgres":
        server = PrivatePostgres()
    else:
        raise Unavailable(f"{backend} has no server to restart")
    try:
        server.start()
        yield server
    finally:
        server.kill()
