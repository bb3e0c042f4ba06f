"""Worker processes under one supervisor (``bgcoor worker --processes N``).

The :class:`Supervisor` starts N child processes, each an ordinary worker for the same app
and options, restarts one that exits while nothing asked it to (after a backoff, so a child
that fails at start-up does not spin), and passes every SIGTERM or SIGINT it receives on to
each child, so a child stops exactly as a lone worker would: the first signal gracefully,
the second forcing, the third at once.

Each child runs in its own process group: a Ctrl+C on the terminal (or ``kill`` of the
supervisor's group) reaches the supervisor only, and each child sees the signal once, as
forwarded. A child is linked to the supervisor by a socket (:class:`ChildLink`): it says
``ready`` through it once its signal handlers are in place, and it stops gracefully, as on
a SIGTERM, when the socket reaches end of file, which happens when the supervisor is gone,
even SIGKILLed, so no child outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger("bgcoor.supervisor")

#: The variable through which a child learns its index and the file descriptor of its link
#: (``INDEX:FD``); it is not a ``BGCOOR_`` setting, and the child removes it at once.
LINK_VARIABLE = "_BGCOOR_SUPERVISED"

_READY = b"ready\n"


@dataclasses.dataclass(frozen=True)
class Backoff:
    """How long to wait before restarting a child that exited: ``initial`` seconds,
    doubled after each further exit within ``stable_after`` seconds of its start, up to
    ``maximum``. A child that ran ``stable_after`` seconds or longer starts over."""

    initial: float = 1.0
    maximum: float = 30.0
    stable_after: float = 30.0

    def delay(self, quick_exits: int) -> float:
        """The wait after ``quick_exits`` exits in a row (1 or more)."""
        return float(min(self.initial * 2 ** max(quick_exits - 1, 0), self.maximum))


@dataclasses.dataclass
class _Slot:
    """One of the N places a child runs in; a restarted child keeps its index."""

    index: int
    process: asyncio.subprocess.Process | None = None
    ready: bool = False
    quick_exits: int = 0
    restarts: int = 0
    clean: bool = True  # the last child in this slot stopped cleanly when asked to


class Supervisor:
    """Run ``processes`` children of ``command`` (the argv of one child) and keep them
    running until a signal, or (``burst``) until each has exited with 0."""

    def __init__(
        self,
        command: Sequence[str],
        processes: int,
        *,
        burst: bool = False,
        backoff: Backoff | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be 1 or more, not {processes}")
        self.command = list(command)
        self.burst = burst
        self.backoff = backoff or Backoff()
        self._env = dict(os.environ if env is None else env)
        self._slots = [_Slot(index) for index in range(1, processes + 1)]
        self._signals: list[signal.Signals] = []
        self._stopping = asyncio.Event()
        self._all_ready = asyncio.Event()

    @property
    def processes(self) -> int:
        return len(self._slots)

    @property
    def restarts(self) -> int:
        """Children started again after one exited, so far."""
        return sum(slot.restarts for slot in self._slots)

    async def run(self, on_ready: Callable[[], object] | None = None) -> int:
        """Supervise until stopped; the exit status for the supervisor: 0 when every
        child stopped cleanly (exit status 0, or stopped before it was ready, holding no
        task), 1 otherwise. ``on_ready`` is called once every child has said it is ready."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            keepers = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
            announce = asyncio.create_task(self._announce(on_ready))
            await asyncio.gather(*keepers)
            announce.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 0 if all(slot.clean for slot in self._slots) else 1

    async def _announce(self, on_ready: Callable[[], object] | None) -> None:
        await self._all_ready.wait()
        if on_ready is not None and not self._stopping.is_set():
            on_ready()

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals.append(sig)
        if len(self._signals) == 1:
            log.info(
                "%s received: stopping %d worker process(es) (a second signal forces them)",
                sig.name,
                self.processes,
            )
        self._stopping.set()
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                _send(slot.process, sig)

    # -- one slot --------------------------------------------------------------------

    async def _keep(self, slot: _Slot) -> None:
        """Run children in ``slot`` until the supervisor stops (or, in burst mode, until
        one exits with 0), waiting out the backoff between an exit and the next start."""
        while not self._stopping.is_set():
            started = time.monotonic()
            pid, code = await self._run_child(slot)
            if self._stopping.is_set() or (self.burst and code == 0):
                return
            lived = time.monotonic() - started
            slot.quick_exits = slot.quick_exits + 1 if lived < self.backoff.stable_after else 1
            delay = self.backoff.delay(slot.quick_exits)
            log.warning(
                "worker %d (pid %d) %s after %.1f s; restarting it in %g s",
                slot.index,
                pid,
                describe_exit(code),
                lived,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if not self._stopping.is_set():
                slot.restarts += 1

    async def _run_child(self, slot: _Slot) -> tuple[int, int]:
        """Start one child in ``slot``, follow it until it exits; its pid and exit status."""
        ours, theirs = socket.socketpair()
        try:
            env = {**self._env, LINK_VARIABLE: f"{slot.index}:{theirs.fileno()}"}
            process = await asyncio.create_subprocess_exec(
                *self.command, env=env, pass_fds=(theirs.fileno(),), process_group=0
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        slot.process, slot.ready = process, False
        for sig in self._signals:  # a signal that came while it was being started
            _send(process, sig)
        with ours:
            ours.setblocking(False)
            listen = asyncio.create_task(self._listen(slot, ours))
            code = await process.wait()
            listen.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listen
        if self._stopping.is_set():
            slot.clean = code == 0 or not slot.ready
            if not slot.clean:
                log.warning("worker %d (pid %d) %s", slot.index, process.pid, describe_exit(code))
        slot.process = None
        return process.pid, code

    async def _listen(self, slot: _Slot, link: socket.socket) -> None:
        """Wait for the child's ``ready`` on its link."""
        loop = asyncio.get_running_loop()
        received = b""
        while _READY not in received:
            data = await loop.sock_recv(link, 64)
            if not data:
                return  # it exited before it was ready
            received += data
        slot.ready = True
        if all(s.ready for s in self._slots):
            self._all_ready.set()


def _send(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it has just exited
        process.send_signal(sig)


def describe_exit(code: int) -> str:
    """``exited with status 1``, or ``was killed by SIGKILL`` for a negative status."""
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    return f"was killed by {name}"


class ChildLink:
    """A child's end of its link to the supervisor (see the module's docstring)."""

    def __init__(self, index: int, fd: int) -> None:
        self.index = index
        self._socket = socket.socket(fileno=fd)

    @classmethod
    def from_environment(cls) -> ChildLink | None:
        """This process's link when a supervisor started it (and the variable is
        removed, so processes it starts are not taken for children), else ``None``."""
        value = os.environ.pop(LINK_VARIABLE, None)
        if value is None:
            return None
        index, _, fd = value.partition(":")
        try:
            return cls(int(index), int(fd))
        except (ValueError, OSError):
            raise ValueError(f"invalid {LINK_VARIABLE}={value!r}: use INDEX:FD") from None

    def ready(self) -> None:
        """Tell the supervisor this child is serving (its signal handlers in place)."""
        with contextlib.suppress(OSError):  # the supervisor is gone: the watcher stops us
            self._socket.sendall(_READY)

    def watch(self) -> None:
        """Stop this process gracefully, as a SIGTERM would, once the supervisor is
        gone (a daemon thread waits for the link's end of file)."""
        threading.Thread(
            target=self._wait_for_eof, name="bgcoor-supervisor-link", daemon=True
        ).start()

    def _wait_for_eof(self) -> None:
        with contextlib.suppress(OSError):
            while self._socket.recv(64):
                pass
        log.warning("worker %d: the supervisor is gone; stopping", self.index)
        os.kill(os.getpid(), signal.SIGTERM)
