"""Cancel signals over Redis PUBLISH/SUBSCRIBE, on the channel ``<prefix>:cancel``.

``TaskManager.cancel()`` publishes the task's id there after storing its record (one
command on the backend's pipelined connection); every worker pool of the same database and
prefix subscribes on a connection of its own while it runs. Pub/sub is fire-and-forget: a
subscriber that is reconnecting misses what is published meanwhile, so each (re)connection
calls ``on_gap`` and the pool reads its running tasks' records once (see
:class:`bgcoor_core.kit.CancelSignals`: the record is the truth, the signal only makes it
fast).

A subscribed connection only speaks when a message comes, so it is pinged after
:data:`PING_AFTER` quiet seconds: a server that no longer answers (a dead link that TCP
has not noticed) is replaced rather than listened to forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from bgcoor_core import kit

from ._encoding import text
from ._resp import pack

if TYPE_CHECKING:
    from bgcoor_core.kit import OnCancel, OnGap

    from ._base import RedisBase

log = logging.getLogger("bgcoor.redis")

#: Quiet seconds on a subscribed connection before it is pinged; no answer within as
#: many again and it is replaced.
PING_AFTER = 5.0
#: Longest wait between two attempts to subscribe again after the connection failed.
MAX_BACKOFF = 2.0


class RedisCancelSignals:
    """Publishes and subscribes to one backend's cancel channel."""

    def __init__(self, backend: RedisBase) -> None:
        self._backend = backend
        self.channel = backend.key("cancel")
        #: Subscriptions established so far (for tests: a reconnection adds one).
        self.subscriptions = 0

    async def publish(self, task_id: str) -> None:
        await self._backend.command("PUBLISH", self.channel, task_id)

    def subscribe(self, on_cancel: OnCancel, on_gap: OnGap) -> AbstractAsyncContextManager[None]:
        return kit.running_in_background(
            functools.partial(self._listen, on_cancel, on_gap), name="bgcoor-redis-cancels"
        )

    async def _listen(self, on_cancel: OnCancel, on_gap: OnGap) -> None:
        delay = 0.05
        while True:
            conn = self._backend.target.connection_factory()()
            try:
                await self._subscribed(conn)
                self.subscriptions += 1
                delay = 0.05
                on_gap()  # whatever was published while we were not subscribed
                await self._relay(conn, on_cancel)
            except (RedisError, OSError) as exc:
                log.warning(
                    "cancel signals: the subscription to %s failed (%s); again in %.2fs",
                    self._backend.target.safe_url,
                    exc,
                    delay,
                )
            except Exception:  # never stop listening: the pool relies on it while it runs
                log.exception("cancel signals: the subscription failed")
            finally:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def _subscribed(self, conn: AbstractConnection) -> None:
        await conn.connect()  # type: ignore[no-untyped-call]
        await conn.send_packed_command(pack(("SUBSCRIBE", self.channel)), check_health=False)
        reply = await conn.read_response(timeout=self._backend.options.socket_timeout)
        if not (isinstance(reply, list) and reply and text(reply[0]) == "subscribe"):
            raise RedisError(f"unexpected reply to SUBSCRIBE: {reply!r:.100}")

    async def _relay(self, conn: AbstractConnection, on_cancel: OnCancel) -> None:
        """Hand every message to ``on_cancel`` until the connection fails."""
        pinged = False
        while True:
            reply: Any = await conn.read_response(timeout=PING_AFTER)
            if reply is None:  # quiet for PING_AFTER seconds
                if pinged:
                    raise RedisError(f"no answer to PING within {PING_AFTER}s")
                await conn.send_packed_command(pack(("PING",)), check_health=False)
                pinged = True
                continue
            pinged = False
            if isinstance(reply, list) and len(reply) == 3 and text(reply[0]) == "message":
                on_cancel(text(reply[2]))
