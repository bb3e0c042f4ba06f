"""Redis: every key and field the plugin stores damaged one at a time, for the victim's
message and record or for the queue's own keys, with a raw ``redis.asyncio`` client (see
``corruption.py`` and the key layout in ``plugins/bgcoor-redis/README.md``).

Not listed: a value of the wrong type at the queue's *ready* set. It held every good task's
place, so that damage is not one task's; the plugin replaces such a key when it next writes
it (``test_redis_corrupt.py`` covers it in process), but nothing can bring back what it held.

The in-process twin, without worker processes, is
``plugins/bgcoor-redis/tests/test_redis_corrupt.py``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as aredis

from .corruption import Corruption
from .harness import Rig
from .outcome import QUEUE

# What the damage is, and why the victim still runs (for victim_runs entries).
Damage = Callable[[aredis.Redis, "Keys", str], Awaitable[object]]

_BY_RESERVE = "the reserve overwrites it"
_BY_WORKER = "the worker's outcome rewrites the record"
_REPLACED = "the next script to write it replaces it (it holds nothing readable)"


class Keys:
    """The plugin's key names under the rig's prefix (see ``lua/common.lua``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def message(self, task_id: str) -> str:
        return self("m", task_id)

    def record(self, task_id: str) -> str:
        return self("t", task_id)

    def queue(self, kind: str) -> str:
        return self("q", QUEUE, kind)


def _client(rig: Rig) -> tuple[aredis.Redis, Keys]:
    parts = urlsplit(rig.url)
    prefix = parse_qs(parts.query)["prefix"][0]
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    return aredis.Redis(host=host, port=port, db=int(parts.path[1:])), Keys(prefix)


def _corruption(
    name: str, what: str, damage: Damage, runs: str | None = None, shared: str | None = None
) -> Corruption:
    """``damage(client, keys, victim)`` applied once; ``runs`` says why the victim still runs,
    ``shared`` which key of every task's it damages (see :class:`Corruption`)."""

    async def apply(rig: Rig, victim: str) -> None:
        client, keys = _client(rig)
        try:
            await damage(client, keys, victim)
        finally:
            await client.aclose()

    suffix = f"; the victim runs: {runs}" if runs else ""
    return Corruption(
        "redis", name, what + suffix, apply, victim_runs=runs is not None, shared=shared
    )


def _field(
    kind: str, field: str, value: bytes | str, slug: str, what: str, runs: str | None = None
) -> Corruption:
    """HSET one field of the victim's message (``kind="message"``) or record hash."""

    async def damage(client: aredis.Redis, keys: Keys, victim: str) -> None:
        key = keys.message(victim) if kind == "message" else keys.record(victim)
        assert await client.exists(key), f"{key} is not there to damage"
        await client.hset(key, field, value)

    return _corruption(f"{kind}-{slug}", f"{kind} hash field {field}: {what}", damage, runs)


def _drop_field(kind: str, field: str, runs: str | None = None) -> Corruption:
    async def damage(client: aredis.Redis, keys: Keys, victim: str) -> None:
        key = keys.message(victim) if kind == "message" else keys.record(victim)
        assert await client.hdel(key, field) == 1, f"{key} has no field {field}"

    words = {"b": "body", "q": "queue", "s": "status", "j": "json"}
    name = f"{kind}-{words[field]}-missing"
    return _corruption(name, f"{kind} hash without field {field}", damage, runs)


def _wrong_type(name: str, key: Callable[[Keys], str], what: str, runs: str | None) -> Corruption:
    """Replace one key with a string (the counter, a string already, with a list)."""

    async def damage(client: aredis.Redis, keys: Keys, victim: str) -> None:
        target = key(keys)
        await client.delete(target)
        if target == keys("seq"):
            await client.lpush(target, "junk")
        else:
            await client.set(target, "junk")

    return _corruption(name, what, damage, runs, shared="a key of the queue or of every record")


async def _name_index(client: aredis.Redis, keys: Keys, victim: str) -> str:
    name = await client.hget(keys.record(victim), "n")
    assert name, "the victim has no record to read its name from"
    assert isinstance(name, bytes)  # the client decodes nothing
    return keys("i", "n", name.decode())


async def _wrong_type_name_index(client: aredis.Redis, keys: Keys, victim: str) -> None:
    target = await _name_index(client, keys, victim)
    await client.delete(target)
    await client.set(target, "junk")


async def _delete(client: aredis.Redis, name: str) -> None:
    assert await client.delete(name) == 1, f"{name} is not there to delete"


async def _replace_with_string(client: aredis.Redis, name: str) -> None:
    await client.delete(name)
    await client.set(name, "junk")


async def _move(client: aredis.Redis, keys: Keys, victim: str, kind: str, score: float) -> None:
    """Take the victim's id out of the ready set and put it in the queue's ``kind`` set."""
    assert await client.zrem(keys.queue("ready"), victim) == 1
    await client.zadd(keys.queue(kind), {victim: score})


MESSAGE = [
    _corruption(
        "ready-id-without-message",
        "message hash deleted, its id left in the ready set",
        lambda c, k, v: _delete(c, k.message(v)),
    ),
    _corruption(
        "message-not-a-hash",
        "message key holds a string instead of a hash",
        lambda c, k, v: _replace_with_string(c, k.message(v)),
    ),
    _drop_field("message", "b"),
    _field(
        "message", "b", b"\xff\x00not a task", "body-undecodable", "body bytes no codec decodes"
    ),
    _field("message", "d", "many", "deliveries-text", "delivery count not an integer"),
    _field(
        "message",
        "d",
        "9223372036854775807",
        "deliveries-at-max",
        "delivery count at int64 max: no room for one more",
    ),
    _field("message", "l", "-1", "lost-negative", "lost count negative"),
    _field("message", "p", "high", "priority-text", "priority not an integer"),
    _field(
        "message",
        "p",
        "99999",
        "priority-out-of-range",
        "priority out of range: beyond the plugin's range",
    ),
    _field("message", "o", "first", "order-text", "ready score not a number"),
    _field(
        "message",
        "q",
        "elsewhere",
        "queue-other",
        "queue names another queue than the one holding it",
    ),
    _drop_field("message", "q"),
    _field(
        "message",
        "t",
        "junk",
        "token-junk",
        "lease token on a ready message: junk",
        runs=_BY_RESERVE,
    ),
    _field(
        "message",
        "r",
        "\x1b[31mjunk",
        "reason-junk",
        "dead-letter reason on a live message: junk",
        runs="only a dead letter's reason is read, and dead-lettering overwrites it",
    ),
    _field(
        "message",
        "x",
        "yesterday",
        "dead-time-junk",
        "dead-letter time on a live message: not a number",
        runs="only a dead letter's time is read, and dead-lettering overwrites it",
    ),
]

RECORD = [
    _corruption(
        "record-missing",
        "record hash deleted (the message is intact)",
        lambda c, k, v: _delete(c, k.record(v)),
        runs="the worker writes the record from the message",
    ),
    _corruption(
        "record-not-a-hash",
        "record key holds a string instead of a hash",
        lambda c, k, v: _replace_with_string(c, k.record(v)),
    ),
    _field("record", "s", "zombie", "status-unknown", "status not a TaskStatus"),
    _field("record", "s", "", "status-empty", "empty"),
    _field(
        "record",
        "s",
        "succeeded",
        "status-final",
        "status final while its message is still queued",
    ),
    _drop_field("record", "s", runs="a hash without a status counts as no record: rewritten"),
    _field(
        "record",
        "k",
        "junk",
        "token-junk",
        "lease token junk (not '+' and a token)",
        runs=_BY_RESERVE,
    ),
    _field("record", "j", "{not json", "json-garbage", "not JSON", runs=_BY_WORKER),
    _field("record", "j", b'{"id": "\xff"}', "json-not-utf8", "not UTF-8", runs=_BY_WORKER),
    _drop_field("record", "j", runs=_BY_WORKER),
    _field(
        "record", "r", "yesterday", "started-junk", "start marker unparseable", runs=_BY_RESERVE
    ),
    _field("record", "n", "other.name", "name-other", "another task's name", runs=_BY_WORKER),
    _field("record", "q", "elsewhere", "queue-other", "another queue", runs=_BY_WORKER),
    _field(
        "record", "x", "1", "ttl-flag-junk", "TTL flag on a record without a TTL", runs=_BY_RESERVE
    ),
]

SETS = [
    _corruption(
        "leased-entry-expired",
        "victim's id moved from the ready set to the leased set, its lease long over",
        lambda c, k, v: _move(c, k, v, "leased", time.time() - 60),
        runs="a lease that ran out is a lost worker: the task is delivered again",
    ),
    _corruption(
        "scheduled-entry-due",
        "victim's id moved from the ready set to the scheduled set, due long ago",
        lambda c, k, v: _move(c, k, v, "later", time.time() - 60),
        runs="a due scheduled task is promoted",
    ),
    _corruption(
        "ready-entry-first",
        "victim's ready score replaced with -inf (before everything)",
        lambda c, k, v: c.zadd(k.queue("ready"), {v: float("-inf")}),
        runs="a score only orders the queue",
    ),
    _corruption(
        "dead-entry-for-live-message",
        "victim's id added to the dead set while its message is queued",
        lambda c, k, v: c.zadd(k.queue("dead"), {v: time.time()}),
        runs="the dead set is read only for listings and requeues",
    ),
]

WRONG_TYPES = [
    _wrong_type(
        "wake-wrong-type", lambda k: k.queue("wake"), "queue wake list is a string", _REPLACED
    ),
    _wrong_type(
        "leased-wrong-type", lambda k: k.queue("leased"), "leased set is a string", _REPLACED
    ),
    _wrong_type(
        "scheduled-wrong-type", lambda k: k.queue("later"), "scheduled set is a string", _REPLACED
    ),
    _wrong_type("dead-wrong-type", lambda k: k.queue("dead"), "dead set is a string", _REPLACED),
    _wrong_type(
        "queues-wrong-type", lambda k: k("queues"), "queue name set is a string", _REPLACED
    ),
    _wrong_type("seq-wrong-type", lambda k: k("seq"), "sequence counter is a list", _REPLACED),
    _corruption(
        "seq-not-an-integer",
        "sequence counter holds text",
        lambda c, k, v: c.set(k("seq"), "twelve"),
        runs="the next push restarts it above every number in use",
        shared="the sequence counter every push reads",
    ),
    _wrong_type(
        "index-all-wrong-type", lambda k: k("i", "all"), "record index i:all is a string", _REPLACED
    ),
    _wrong_type(
        "index-status-wrong-type",
        lambda k: k("i", "s", "pending"),
        "status index i:s:pending is a string",
        _REPLACED,
    ),
    _corruption(
        "index-name-wrong-type",
        "name index i:n:<name> is a string",
        _wrong_type_name_index,
        runs=_REPLACED,
        shared="the name index, which holds every good task too",
    ),
    _wrong_type(
        "index-queue-wrong-type",
        lambda k: k("i", "q", QUEUE),
        "queue index i:q is a string",
        _REPLACED,
    ),
    _wrong_type(
        "expiry-index-wrong-type",
        lambda k: k("i", "exp"),
        "expiry index i:exp is a string",
        _REPLACED,
    ),
    _wrong_type(
        "expiry-meta-wrong-type",
        lambda k: k("i", "expmeta"),
        "expiry lines i:expmeta is a string",
        _REPLACED,
    ),
]

CORRUPTIONS: list[Corruption] = [*MESSAGE, *RECORD, *SETS, *WRONG_TYPES]
