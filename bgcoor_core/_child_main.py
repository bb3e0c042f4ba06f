"""The loop of a child process that runs process-isolated tasks (``isolation="process"``).

:class:`~bgcoor_core._isolation.ChildPool` starts it as ``python -c BOOT <sys.path> <fd> <pid>``
in a session of its own, so that killing the child's process group also takes whatever
the task spawned. Over its socket (``fd``) it says it is ready, then reads one request at
a time, runs the task's handler (``handler.run(payload)``, as a worker thread would) and
writes back the result or the exception (pickled: the channel is the worker's own). It
never writes a record: the worker does, so a child killed mid-task cannot store anything.
It exits when the socket closes (the worker went away) or on SIGTERM, which interrupts the
task with ``SystemExit`` so its ``finally`` blocks run.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import os
import pickle
import resource
import signal
import socket
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._failures import Failure as Described
    from ._task import Task

#: Every frame: its length, then a pickle.
HEADER = struct.Struct(">Q")

#: What the child runs first (``python -c``): the worker's import path, then this module.
BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from bgcoor_core._child_main import serve; serve(int(sys.argv[2]), int(sys.argv[3]))"
)


@dataclass(frozen=True, slots=True)
class Request:
    """One task for the child: where its function lives and the task itself."""

    module: str
    qualname: str
    #: The worker's main script, when the function is defined in ``__main__``.
    main_path: str | None
    task: Task
    memory_limit_mb: int | None


@dataclass(frozen=True, slots=True)
class Failure:
    """What a task raised: the exception pickled when it survives the round trip, and its
    type's name, message and formatted traceback in any case."""

    pickled: bytes | None
    type_name: str
    message: str
    traceback: str
    #: The memory limit it ran under, when it ran out of memory under one.
    memory_limit_mb: int | None = None
    #: The exception as the record keeps it (:class:`bgcoor_core._failures.Failure`:
    #: type, module, message, traceback, causes), described here, where its chain is.
    described: Described | None = None


def serve(fd: int, parent: int) -> None:
    """Run requests from the socket ``fd`` until it closes; ``parent``: the worker's pid."""
    sock = socket.socket(fileno=fd)
    # A grandchild forked by a task must not hold the socket: the worker learns that
    # the child died from the socket's end.
    os.register_at_fork(after_in_child=sock.close)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when it stops
    _die_with_parent(parent)
    handlers: dict[tuple[str, str], Any] = {}
    send(sock, ("ready", os.getpid()))
    while (data := receive(sock)) is not None:
        request: Request = pickle.loads(data)
        send(sock, _run(request, handlers))


class _Stop(SystemExit):
    """SIGTERM: the worker is stopping this child (a task's own ``SystemExit`` is an
    error of that task, reported like any other)."""


def _terminate(signum: int, frame: object) -> None:
    raise _Stop(128 + signum)


def _die_with_parent(parent: int) -> None:
    """On Linux, have the kernel kill this child when the worker dies (even SIGKILLed)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the worker died before that took effect
            os._exit(1)


def _run(request: Request, handlers: dict[tuple[str, str], Any]) -> tuple[str, Any]:
    from ._context import _CURRENT, CurrentTask

    limit = request.memory_limit_mb
    try:
        task = request.task
        handler = _handler(request, task.name, handlers)
        token = _CURRENT.set(CurrentTask(task))
        try:
            with _memory_limit(limit):
                result = handler.run(task.payload)
        finally:
            _CURRENT.reset(token)
        return "ok", _portable(task.name, result)
    except _Stop:
        raise
    except (Exception, SystemExit) as exc:
        return "error", _failure(exc, limit)


def _handler(request: Request, name: str, handlers: dict[tuple[str, str], Any]) -> Any:
    """The task's handler: the decorated function's own (``TaskFunction.entry.handler``),
    else a handler around the plain function, imported once."""
    key = (request.module, request.qualname)
    handler = handlers.get(key)
    if handler is None:
        from ._handlers import FunctionHandler

        found: Any = _module(request)
        for part in request.qualname.split("."):
            found = getattr(found, part)
        entry = getattr(found, "entry", None)
        handler = entry.handler if entry is not None else FunctionHandler(found, name)
        handlers[key] = handler
    return handler


def _module(request: Request) -> Any:
    if request.module != "__main__":
        return importlib.import_module(request.module)
    if "__mp_main__" in sys.modules:
        return sys.modules["__mp_main__"]
    if request.main_path is None:
        raise ImportError("the task is defined in __main__, which has no file to import")
    # The worker's script, imported under another name so its ``if __name__ ==
    # "__main__"`` block does not run again here.
    spec = importlib.util.spec_from_file_location("__mp_main__", request.main_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import the worker's main script {request.main_path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__mp_main__"] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _memory_limit(mb: int | None) -> Any:
    """Cap this process's address space (``RLIMIT_AS``) for the task, then restore it."""
    if mb is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    wanted = mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _portable(name: str, result: Any) -> Any:
    """The result, checked to cross back to the worker, which decides whether its format
    carries it and checks its size: refused here, where the error is the task's."""
    if result is None:
        return None
    from ._errors import PayloadError

    try:
        pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        problem = f"{type(exc).__name__}: {exc}"[:300]
        raise PayloadError(
            f"task {name!r} returned a result that cannot leave its child process: {problem}"
        ) from None
    return result


def _failure(exc: BaseException, limit: int | None) -> Failure:
    from ._failures import Failure as Described
    from ._failures import format_traceback, message_of

    text = format_traceback(exc)
    out_of_memory = limit is not None and _is_memory_error(exc)
    pickled: bytes | None = None
    with contextlib.suppress(Exception):
        data = pickle.dumps(exc)
        pickle.loads(data)  # an exception whose class cannot be rebuilt is sent by name
        pickled = data
    return Failure(
        pickled,
        type(exc).__name__,
        message_of(exc),
        text,
        limit if out_of_memory else None,
        Described.of(exc, text),
    )


def _is_memory_error(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, MemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def send(sock: socket.socket, message: object) -> None:
    data = pickle.dumps(message)
    sock.sendall(HEADER.pack(len(data)) + data)


def receive(sock: socket.socket) -> bytes | None:
    """The next frame, or ``None`` once the other end closed."""
    header = _exactly(sock, HEADER.size)
    if header is None:
        return None
    return _exactly(sock, HEADER.unpack(header)[0])


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            return None
        chunks += chunk
    return bytes(chunks)
