"""What the broker and storage halves of the backend share: connections and scripts."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from redis.exceptions import NoScriptError, ResponseError

from bgcoor_core import Codec, ConfigurationError, Message, Task

from ._channel import BlockingPool, CommandChannel
from ._encoding import chunks, limit_args, raise_for, text
from ._notices import Subscriber
from ._options import RedisTarget
from ._scripts import Script, scripts

log = logging.getLogger("bgcoor.redis")


T = TypeVar("T")


def per_loop(table: dict[asyncio.AbstractEventLoop, T], make: Callable[[], T]) -> T:
    """The running event loop's entry of ``table``, made by ``make`` on first use; the
    entries of loops closed since are dropped then."""
    loop = asyncio.get_running_loop()
    entry = table.get(loop)
    if entry is None:
        for stale in [other for other in table if other.is_closed()]:
            del table[stale]
        entry = table[loop] = make()
    return entry


class Link:
    """The connections of one event loop (asyncio connections cannot change loops).

    Commands go to one of ``pipelines`` auto-pipelined connections (one by default): an
    idle one if there is one, else the one with the shortest queue.
    """

    def __init__(self, target: RedisTarget) -> None:
        connect = target.connection_factory()
        options = target.options
        self.channels = [
            CommandChannel(connect, reply_timeout=options.socket_timeout, where=target.safe_url)
            for _ in range(options.pipelines)
        ]
        self.blocking = BlockingPool(connect, limit=options.max_connections, where=target.safe_url)
        self.subscriber = Subscriber(
            connect, where=target.safe_url, timeout=options.socket_connect_timeout
        )
        self._loading: dict[str, asyncio.Future[Any]] = {}
        self._where = target.safe_url
        #: The server's eviction policy has been found safe (see ``check_policy``).
        self.policy_ok = False
        self._policy: asyncio.Future[None] | None = None

    async def check_policy(self) -> None:
        """Refuse a server that evicts any key when full (``maxmemory-policy allkeys-*``).

        Such a server would drop queued tasks and records silently while every write
        succeeds; the check makes every call fail instead, naming the setting. A
        ``volatile-*`` policy only evicts keys with a TTL, here finished tasks' records: a
        warning. Checked once per event loop; a server that hides ``CONFIG`` is trusted.
        """
        if self._policy is None:
            self._policy = asyncio.ensure_future(self._read_policy())
        try:
            await asyncio.shield(self._policy)
        except ConfigurationError:
            raise
        except Exception:
            self._policy = None  # e.g. the server is down: look again next time
            raise
        self.policy_ok = True

    async def _read_policy(self) -> None:
        try:
            reply = await self.send("CONFIG", "GET", "maxmemory-policy")
        except ResponseError:  # CONFIG is disabled or not allowed here
            return
        policy = text(reply[1]) if reply else ""
        if policy.startswith("allkeys-"):
            raise ConfigurationError(
                f"Redis at {self._where} has maxmemory-policy {policy}: when full it would "
                "silently evict queued tasks and their records. Set maxmemory-policy to "
                "noeviction (or a volatile-* policy, which only evicts finished records)"
            )
        if policy.startswith("volatile-"):
            log.warning(
                "Redis at %s has maxmemory-policy %s: when full it may evict finished "
                "tasks' records before their TTL ends",
                self._where,
                policy,
            )

    def send(self, *command: Any) -> asyncio.Future[Any]:
        """Queue one command; the future resolves to its raw reply (or its error)."""
        channels = self.channels
        chosen = channels[0]
        if chosen.busy:
            for channel in channels[1:]:
                if not channel.busy:
                    chosen = channel
                    break
            else:
                chosen = min(channels, key=lambda c: c.queued)
        return chosen.send(*command)

    @property
    def round_trips(self) -> int:
        """Batches sent so far (one round trip each), over all command connections."""
        return sum(channel.batches for channel in self.channels)

    @property
    def commands(self) -> int:
        """Commands sent so far over the command connections."""
        return sum(channel.commands for channel in self.channels)

    async def load(self, script: Script) -> None:
        """``SCRIPT LOAD`` once, however many callers found the script missing at once."""
        loading = self._loading.get(script.sha)
        if loading is None:
            loading = self.send("SCRIPT", "LOAD", script.source)
            self._loading[script.sha] = loading
            loading.add_done_callback(lambda _: self._loading.pop(script.sha, None))
        await asyncio.shield(loading)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.blocking.close()
        await self.subscriber.close()


class RedisBase:
    """Connections per event loop, the Lua scripts, and background chores."""

    def __init__(self, target: RedisTarget, codec: Codec | None = None) -> None:
        self.codec = codec or Codec.json()
        self.target = target
        self.options = target.options
        self.prefix = target.options.prefix
        self._links: dict[asyncio.AbstractEventLoop, Link] = {}
        self._chores: set[asyncio.Task[Any]] = set()
        self._scripts = scripts()
        #: Queue lists whose last reserve left nothing ready (see the broker's reserve).
        self._drained: dict[tuple[str, ...], bool] = {}
        #: Monotonic time the last reserve of these queues said a task falls due.
        self._falls_due: dict[tuple[str, ...], float] = {}
        #: ``Broker.queue_limits`` (this __init__ stands in for the Broker's): checked by the
        #: enqueue scripts, set when the backend is wired with ``BGCOOR_QUEUE_LIMITS``.
        self.queue_limits: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target.safe_url!r})"

    def key(self, *parts: str) -> str:
        """A key in this backend's namespace, e.g. ``key("q", "default", "ready")``."""
        return ":".join((self.prefix, *parts))

    def link(self) -> Link:
        return per_loop(self._links, lambda: Link(self.target))

    async def run(self, name: str, *args: Any) -> Any:
        """Run script ``name`` with ARGV ``prefix, *args``: one command, one atomic step."""
        script = self._scripts[name]
        link = self.link()
        if not link.policy_ok:
            await link.check_policy()
        try:
            return await link.send("EVALSHA", script.sha, 0, self.prefix, *args)
        except NoScriptError:
            # Not cached (first use, or the server restarted), so it did not run: load it
            # and run it now.
            await link.load(script)
            return await link.send("EVALSHA", script.sha, 0, self.prefix, *args)

    async def command(self, *args: Any) -> Any:
        """One plain command through the pipelined connection."""
        link = self.link()
        if not link.policy_ok:
            await link.check_policy()
        return await link.send(*args)

    async def enqueue(self, tasks: Sequence[Task], messages: Sequence[Message]) -> None:
        """Store records and push messages, each chunk in one atomic script call.

        Everything is validated and encoded before anything is sent. A batch larger than
        one chunk is stored chunk by chunk; an error stops at its chunk. A batch with a
        message for a limited queue (:attr:`queue_limits`) is one call, whatever its size,
        which checks the limits before it writes: all of it is stored, or it raises
        :class:`~bgcoor_core.QueueFullError` and nothing is.
        """
        status = {task.id: task.status.value for task in tasks}
        for args in chunks(tasks, messages, limit_args(messages, self.queue_limits)):
            reply = await self.run("enqueue", *args)
            if reply != 0:
                task_id = text(reply[1])
                raise_for(reply, task_id, status.get(task_id, ""))

    def chore(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        """Run ``work`` in the background (e.g. undoing a cancelled reservation)."""
        task = asyncio.get_running_loop().create_task(work)
        self._chores.add(task)

        def done(finished: asyncio.Task[Any]) -> None:
            self._chores.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                log.warning("%s failed: %s", what, finished.exception())

        task.add_done_callback(done)

    async def close(self) -> None:
        """Finish background chores and close this process's connections."""
        give_up = asyncio.get_running_loop().time() + self.options.socket_timeout
        while self._chores:  # a chore may start another (a reserve, then its hand-back)
            left = give_up - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await asyncio.wait(list(self._chores), timeout=left)
        current = asyncio.get_running_loop()
        links, self._links = self._links, {}
        for loop, link in links.items():
            if loop is current:
                await link.close()
            elif loop.is_running():  # another thread's loop (e.g. the sync API's portal)
                closing = asyncio.run_coroutine_threadsafe(link.close(), loop)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.wrap_future(closing), timeout=5.0)
