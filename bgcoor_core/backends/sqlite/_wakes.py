"""Waking other processes that share a database file, over Unix datagram sockets.

SQLite tells no one about a commit. Each process that waits (a consumer reserving, a
caller waiting for a result) binds one datagram socket in a directory kept for the file
(``<file>-wake/``, or one under the temporary directory named for the file when that
path is too long for a socket); a process that commits something worth seeing (a push,
an outcome, a freed limit slot) sends one byte to every socket there. A receiver wakes
its waiters, which look again. A wake lost (a full receive buffer, a socket made after
the sender listed the directory) costs only the poll each waiter keeps as a safety net.

The directory is listed at most once every :data:`PEERS_TTL` seconds; a socket whose
process is gone refuses the datagram and is removed. Without ``AF_UNIX`` (Windows) or for
an in-memory database nothing is sent and waiters poll, as they did before.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
from collections.abc import Callable

log = logging.getLogger("bgcoor.sqlite")

#: Seconds a listing of the peers' sockets is reused before the directory is read again.
PEERS_TTL = 1.0
#: Longest socket path used (``sun_path`` holds 108 bytes on Linux, 104 on macOS).
_MAX_SOCKET_PATH = 100
_SUFFIX = ".sock"


def wake_dir(db_path: str) -> str | None:
    """Where the sockets of the processes using ``db_path`` live; ``None``: nowhere (an
    in-memory database, or no Unix sockets on this platform)."""
    if not hasattr(socket, "AF_UNIX") or db_path in ("", ":memory:") or "mode=memory" in db_path:
        return None
    real = os.path.realpath(db_path)
    beside = real + "-wake"
    if len(beside) + 1 + 32 <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(real.encode()).hexdigest()[:24]
    return os.path.join(tempfile.gettempdir(), f"bgcoor-wake-{digest}")


class Wakes:
    """This process's end of the wake-ups for one database file: ``notify`` tells the
    other processes; once ``listen`` was called, a datagram received calls ``on_wake``
    (in a daemon thread; it must be thread-safe)."""

    def __init__(self, db_path: str, on_wake: Callable[[], None]) -> None:
        self.directory = wake_dir(db_path)
        self._on_wake = on_wake
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._path: str | None = None
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._sender: socket.socket | None = None
        self._peers: list[str] = []
        self._peers_at = -PEERS_TTL

    def listen(self) -> None:
        """Bind this process's socket, once (again after a fork). Cheap when bound."""
        if self._pid == os.getpid() or self.directory is None or self._closed:
            return
        with self._lock:
            if self._pid == os.getpid() or self._closed:
                return
            try:
                os.makedirs(self.directory, exist_ok=True)
                path = os.path.join(
                    self.directory, f"{os.getpid()}-{secrets.token_hex(4)}{_SUFFIX}"
                )
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.bind(path)
            except OSError as exc:  # a read-only directory: waiters keep polling
                log.debug("no wake-up socket for %s: %s", self.directory, exc)
                self.directory = None
                return
            self._sock, self._path, self._pid = sock, path, os.getpid()
            self._peers_at = -PEERS_TTL  # list again, now without this socket
            self._thread = threading.Thread(
                target=self._receive, args=(sock,), name="bgcoor-sqlite-wakes", daemon=True
            )
            self._thread.start()

    def _receive(self, sock: socket.socket) -> None:
        while not self._closed:
            try:
                sock.recv(16)
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):  # several at once: one wake
                    while sock.recv(16):
                        pass
                sock.setblocking(True)
            except OSError:  # closed
                return
            if not self._closed:
                self._on_wake()

    def notify(self) -> None:
        """Tell every other process using the file that something changed; never blocks
        and never raises (a wake lost is a poll later)."""
        if self.directory is None:
            return
        peers = self._listed()
        if not peers:
            return
        sender = self._sender
        if sender is None:
            sender = self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
        for path in list(peers):
            try:
                sender.sendto(b"!", path)
            except (BlockingIOError, InterruptedError):  # its buffer is full: it is awake
                pass
            except (ConnectionRefusedError, FileNotFoundError):  # its process is gone
                self._forget(path)
            except OSError as exc:
                log.debug("wake-up to %s failed: %s", path, exc)

    def _listed(self) -> list[str]:
        now = time.monotonic()
        if now - self._peers_at < PEERS_TTL:
            return self._peers
        assert self.directory is not None
        try:
            with os.scandir(self.directory) as entries:
                peers = [e.path for e in entries if e.name.endswith(_SUFFIX)]
        except FileNotFoundError:  # nobody has listened yet
            peers = []
        except OSError as exc:
            log.debug("cannot list %s: %s", self.directory, exc)
            peers = []
        own = self._path if self._pid == os.getpid() else None
        self._peers = [p for p in peers if p != own]
        self._peers_at = now
        return self._peers

    def _forget(self, path: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(ValueError):
            self._peers.remove(path)

    def close(self) -> None:
        """Stop listening and remove this process's socket."""
        self._closed = True
        sock, path, mine = self._sock, self._path, self._pid == os.getpid()
        self._sock = None
        if sock is not None and path is not None and mine:
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._sender is not None:
            self._sender.close()
            self._sender = None
