"""Process isolation: sync tasks declared with ``isolation="process"`` run in child processes.

A :class:`ChildPool` keeps up to ``size`` children (started on first use, reused, replaced
when one dies or has run ``max_tasks_per_child`` tasks). Each child runs in a session of
its own (``start_new_session``), so a signal to its process group reaches whatever the
task spawned. The deadline is hard: when a task's timeout passes, or its attempt is
cancelled (``TaskManager.cancel()``, a forced shutdown), the group gets SIGTERM, then
SIGKILL after ``process_kill_grace`` seconds, whatever the task is doing (sleeping, blocked
in ``recv``, looping in C code). The worker records the outcome only once the child is
dead, and it never reads a killed child's answer: a killed attempt cannot store anything.
A memory cap (``memory_limit_mb``) is the child's ``RLIMIT_AS`` while the task runs.
A child that dies of a signal nobody here sent (a segfault, the out-of-memory killer) raises
:class:`ChildKilledError`: the executor counts it toward ``max_worker_lost`` like a lost
lease, not as the task's failure.

The child's side of the conversation is :mod:`bgcoor_core._child_main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._child_main import BOOT, HEADER, Failure, Request
from ._errors import (
    ChildError,
    MemoryLimitError,
    TaskRegistrationError,
    TaskTimeoutError,
    WorkerLostError,
)
from ._failures import (
    CARRIED,
    CAUSE_MESSAGE_LIMIT,
    MAX_CAUSES,
    MESSAGE_LIMIT,
    FailureCause,
    clip,
)
from ._failures import Failure as Described
from ._handlers import FunctionHandler, Handler
from ._task import Task

if TYPE_CHECKING:
    from ._settings import Settings

log = logging.getLogger("bgcoor.isolation")

#: How long a child may take to start (import bg-coor and say it is ready).
START_TIMEOUT = 60.0
#: How long a child that is told to go (its socket closed) may take to exit.
EXIT_TIMEOUT = 5.0
_POLL = 0.01


class ChildKilledError(WorkerLostError):
    """The child running a task was killed by ``signal``, which bg-coor did not send (its
    own kills are a timeout's or a cancel's): a segfault, the out-of-memory killer,
    another process. Not the task's failure as such, so it uses no retry attempt; it
    counts toward ``max_worker_lost``, so a task that keeps killing its child ends dead."""

    def __init__(self, message: str, signal: signal.Signals) -> None:
        super().__init__(message)
        self.signal = signal


@dataclass(frozen=True, slots=True)
class ChildTarget:
    """Where a child finds a task's function: ``module`` and ``qualname``, and the
    worker's script when the module is ``__main__``."""

    module: str
    qualname: str
    main_path: str | None


def child_target(name: str, handler: Handler) -> ChildTarget:
    """Where a child imports ``handler``'s function from; :class:`TaskRegistrationError`
    when it cannot (a lambda, a nested function, an async function, an object)."""
    where = f"task {name!r} has isolation='process', which"
    if not isinstance(handler, FunctionHandler) or not inspect.isfunction(handler.fn):
        raise TaskRegistrationError(
            f"{where} needs a plain function defined at module level (got {handler!r})"
        )
    fn = handler.fn
    if handler.is_async:
        raise TaskRegistrationError(
            f"{where} runs sync functions only; {fn.__qualname__} is async and runs on the "
            "worker's event loop (drop isolation, or make it a def)"
        )
    qualname, module = fn.__qualname__, fn.__module__
    if "<lambda>" in qualname or "<locals>" in qualname or not module:
        kind = "a lambda" if "<lambda>" in qualname else "defined inside a function"
        raise TaskRegistrationError(
            f"{where} needs a function the child process can import, and "
            f"{module}.{qualname} is {kind}: define it with def at module level"
        )
    main_path = None
    if module == "__main__":
        main_path = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_path is None:
            raise TaskRegistrationError(
                f"{where} needs a function the child process can import, and "
                f"{qualname} is defined in an interactive __main__: put it in a module"
            )
        main_path = os.path.abspath(main_path)
    return ChildTarget(module, qualname, main_path)


class _Child:
    """One child process and its end of the socket."""

    def __init__(
        self, process: subprocess.Popen[bytes], reader: asyncio.StreamReader, writer: Any
    ) -> None:
        self.process = process
        self.reader = reader
        self.writer: asyncio.StreamWriter = writer
        self.pid = process.pid
        self.tasks = 0

    async def send(self, message: object) -> None:
        data = pickle.dumps(message)
        self.writer.write(HEADER.pack(len(data)) + data)
        await self.writer.drain()

    async def receive(self) -> Any:
        """The child's next message; :class:`asyncio.IncompleteReadError` if it died."""
        header = await self.reader.readexactly(HEADER.size)
        return pickle.loads(await self.reader.readexactly(HEADER.unpack(header)[0]))

    def exited(self) -> bool:
        """Whether it has exited, without reaping it (its pid, which is its process
        group's id, stays taken until :meth:`reap`)."""
        if not hasattr(os, "waitid"):  # macOS: reaped, and its group id may be reused
            return self.process.poll() is not None
        try:
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped already
            return True

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def wait_exit(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.exited():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL)
        return True

    def reap(self) -> int:
        """Its exit status (negative: the signal that killed it), the socket closed."""
        self.writer.close()
        return self.process.wait()


class ChildPool:
    """Child processes for process-isolated tasks: ``size`` run at once at most.

    Nothing is started until a task needs a child; :meth:`close` stops them all.
    """

    def __init__(self, size: int, *, max_tasks_per_child: int | None, kill_grace: float) -> None:
        self.size = size
        self.max_tasks_per_child = max_tasks_per_child
        self.kill_grace = kill_grace
        self._idle: list[_Child] = []
        self._slots: asyncio.Semaphore | None = None
        self._ending: set[asyncio.Task[None]] = set()  # children being stopped
        self.started = 0  # children started so far

    @classmethod
    def for_settings(cls, settings: Settings, concurrency: int | None) -> ChildPool:
        """Sized by ``process_pool_size``, else ``concurrency`` capped at the CPU count."""
        size = settings.process_pool_size
        if size is None:
            cpus = os.cpu_count() or 1
            size = cpus if concurrency is None else min(concurrency, cpus)
        return cls(
            size,
            max_tasks_per_child=settings.max_tasks_per_child,
            kill_grace=settings.process_kill_grace,
        )

    async def run(
        self, target: ChildTarget, task: Task, timeout: float | None, memory_limit_mb: int | None
    ) -> Any:
        """Run ``task`` in a child: its JSON-ready result, or what it raised (re-raised
        here), :class:`TaskTimeoutError` or :class:`WorkerLostError`."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        request = Request(target.module, target.qualname, target.main_path, task, memory_limit_mb)
        async with self._slots:
            child = await self._checkout()
            kind, value = await self._call(child, request, task.name, timeout)
            child.tasks += 1
            if kind == "ok":
                await self._checkin(child)
                return value
            if value.memory_limit_mb is not None:  # its heap may be damaged: a new one
                await asyncio.shield(self._track(self._let_go(child)))
                detail = f": {value.type_name}: {value.message}" if value.message else ""
                error = MemoryLimitError(
                    f"task {task.name!r} exceeded its memory limit of "
                    f"{value.memory_limit_mb} MB{detail}"
                )
                _carry(error, _out_of_memory(error, value))
                raise error from _ChildTraceback(value.traceback)
            await self._checkin(child)
            raise _rebuilt(value)

    async def _call(
        self, child: _Child, request: Request, name: str, timeout: float | None
    ) -> tuple[str, Any]:
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await child.send(request)
                reply: tuple[str, Any] = await child.receive()
                return reply
        except TimeoutError:
            if not deadline.expired():
                raise
            await asyncio.shield(self._stopping(child))
            raise TaskTimeoutError(
                f"task {name!r} exceeded its timeout of {timeout}s: its child process "
                f"{child.pid} was killed"
            ) from None
        except asyncio.CancelledError:  # cancelled, or a forced shutdown: stop it
            await asyncio.shield(self._stopping(child))
            raise
        except (asyncio.IncompleteReadError, ConnectionError):
            raise await self._lost(child, request, name) from None

    async def _lost(self, child: _Child, request: Request, name: str) -> WorkerLostError:
        """The child died under a task: why, once it is reaped (and its group killed)."""
        exited = await child.wait_exit(EXIT_TIMEOUT)
        child.signal_group(signal.SIGKILL)  # whatever it left behind in its group
        if not exited:
            await child.wait_exit(EXIT_TIMEOUT)
        status = child.reap()
        if status >= 0:
            cause = f"exited with status {status} without answering"
            log.warning("task %r: its child process %d %s", name, child.pid, cause)
            return WorkerLostError(f"task {name!r}: child process {child.pid} {cause}")
        killer = signal.Signals(-status)
        cause = f"killed by {killer.name}"
        if request.memory_limit_mb is not None:
            cause += f" (it ran under a memory limit of {request.memory_limit_mb} MB)"
        elif killer is signal.SIGKILL:
            cause += " (the out-of-memory killer, or another process)"
        log.warning("task %r: its child process %d was %s", name, child.pid, cause)
        return ChildKilledError(f"task {name!r}: child process {child.pid} {cause}", killer)

    async def _checkout(self) -> _Child:
        while self._idle:
            child = self._idle.pop()
            if not child.exited():
                return child
            self._retire(child)  # died while idle (the OOM killer, say)
        return await self._start()

    async def _checkin(self, child: _Child) -> None:
        """Back to the idle children, or (after ``max_tasks_per_child`` tasks) gone, before
        its slot is free: the pool never holds more than ``size`` processes."""
        limit = self.max_tasks_per_child
        if limit is not None and child.tasks >= limit:
            await asyncio.shield(self._track(self._let_go(child)))
        else:
            self._idle.append(child)

    async def _start(self) -> _Child:
        ours, theirs = socket.socketpair()
        pid = str(os.getpid())
        try:
            with theirs:
                # On the loop's thread, not another: the kernel ties the child's death
                # signal (PR_SET_PDEATHSIG) to the thread that started it. A fork and
                # exec take milliseconds.
                process = subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, "-c", BOOT, json.dumps(sys.path), str(theirs.fileno()), pid],
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                )
            reader, writer = await asyncio.open_connection(sock=ours)
        except BaseException:
            ours.close()
            raise
        child = _Child(process, reader, writer)
        self.started += 1
        try:
            async with asyncio.timeout(START_TIMEOUT):
                await child.receive()  # ("ready", pid)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            child.signal_group(signal.SIGKILL)
            await child.wait_exit(EXIT_TIMEOUT)
            status = child.reap()
            raise WorkerLostError(f"a child process could not start (status {status})") from None
        except BaseException:
            await asyncio.shield(self._stopping(child))
            raise
        log.debug("child process %d started", child.pid)
        return child

    async def _stop(self, child: _Child) -> None:
        """SIGTERM to its group, SIGKILL after the grace; reaped."""
        child.signal_group(signal.SIGTERM)
        await child.wait_exit(self.kill_grace)
        child.signal_group(signal.SIGKILL)  # the child, if it lingers, and any grandchild
        await child.wait_exit(EXIT_TIMEOUT)
        child.reap()

    def _stopping(self, child: _Child) -> asyncio.Task[None]:
        """:meth:`_stop` in a task of its own, which :meth:`close` waits for: a second
        cancellation of the caller does not leave the child half stopped."""
        return self._track(self._stop(child))

    def _retire(self, child: _Child) -> None:
        """Let ``child`` go in the background: its socket closed, it exits."""
        self._track(self._let_go(child))

    def _track(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        ending = asyncio.get_running_loop().create_task(coroutine)
        self._ending.add(ending)
        ending.add_done_callback(self._ending.discard)
        return ending

    async def _let_go(self, child: _Child) -> None:
        child.writer.close()  # it reads the end of its socket and exits
        if not await child.wait_exit(EXIT_TIMEOUT):
            await self._stop(child)
            return
        child.signal_group(signal.SIGKILL)  # grandchildren it left in its group
        child.reap()

    async def close(self) -> None:
        """Stop every idle child and wait for those already stopping."""
        idle, self._idle = self._idle, []
        for child in idle:
            self._retire(child)
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)


def _rebuilt(failure: Failure) -> BaseException:
    """The child's exception, with the child's traceback as its cause."""
    exc: BaseException | None = None
    if failure.pickled is not None:
        with contextlib.suppress(Exception):
            exc = pickle.loads(failure.pickled)
    if not isinstance(exc, Exception):  # a task's SystemExit must not stop the worker
        exc = _named(failure.type_name)(failure.message)
    elif str(exc) != failure.message:  # a class whose __init__ rewrites its message
        exc.args = (failure.message,)
    exc.__cause__ = _ChildTraceback(failure.traceback)
    _carry(exc, failure.described)
    return exc


def _carry(exc: BaseException, described: Described | None) -> None:
    """Have the record keep ``described`` (the child's account of the exception: its
    class's module, its chain) rather than what the rebuilt ``exc`` says."""
    if described is not None:
        with contextlib.suppress(Exception):  # a class that refuses new attributes
            setattr(exc, CARRIED, described)


def _out_of_memory(error: MemoryLimitError, failure: Failure) -> Described | None:
    """The failure of a task that ran out of memory: this error, with the child's
    traceback and the child's exception (and its chain) as its causes."""
    child = failure.described
    if child is None:
        return None
    message = clip(child.message, CAUSE_MESSAGE_LIMIT)
    kind = FailureCause(type=child.type, module=child.module, message=message)
    causes = [kind, *child.causes]
    return Described(
        type=type(error).__qualname__,
        module=type(error).__module__,
        message=clip(str(error), MESSAGE_LIMIT),
        traceback=child.traceback,
        causes=causes[:MAX_CAUSES],
        causes_clipped=child.causes_clipped or len(causes) > MAX_CAUSES,
    )


class _ChildTraceback(Exception):
    """The traceback of an exception raised in a child process, as text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "in the child process:\n" + self.text


_NAMED: dict[str, type[ChildError]] = {}


def _named(type_name: str) -> type[ChildError]:
    found = _NAMED.get(type_name)
    if found is None:
        name = type_name if type_name.isidentifier() else "ChildError"
        found = _NAMED.setdefault(type_name, type(name, (ChildError,), {}))
    return found
