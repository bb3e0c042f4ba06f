"""Scenarios 7, 8, 12 and 13: malformed, oversize, hostile-named and pickled messages."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from bgcoor_core import (
    Codec,
    InvalidNameError,
    Message,
    PayloadTooLargeError,
    SettingsError,
    load_settings,
)
from bgcoor_core._codec import JSON, JsonSerializer
from bgcoor_core.serializers import PickleSerializer

from .harness import Rig, Worker, settings_env, wait_until
from .outcome import QUEUE, Outcome, account, nothing_left, stop_cleanly
from .payloads import HOSTILE_NAMES, PICKLE, bad_bodies, marker_pickle, new_id

MARKER = "unpickled.marker"


async def _dead_lettered(rig: Rig, ids: set[str], outcome: Outcome) -> dict[str, str]:
    """Wait (bounded) until ``ids`` are all dead letters; their reasons. A timeout is
    recorded as a failure, so the checks that follow say what is missing."""
    found: dict[str, str] = {}

    async def all_dead() -> bool:
        rig.workers.check()
        letters = await rig.producer.broker.dead_letters(QUEUE, limit=100_000)
        found.clear()
        found.update({d.id: d.reason for d in letters})
        return ids <= set(found)

    try:
        await wait_until(all_dead, 60, f"{len(ids)} message(s) dead-lettered")
    except AssertionError as exc:
        missing = sorted(ids - set(found))
        outcome.failures.append(f"{exc}; {len(missing)} never dead-lettered: {missing[:5]}")
    return found


def _log_problems(worker: Worker, outcome: Outcome) -> None:
    log = worker.output()
    for sign in ("Traceback", "settling failed"):
        outcome.expect(sign not in log, f"worker log shows {sign!r}")


async def malformed(rig: Rig, *, examples: int = 60, good: int = 20) -> Outcome:
    """7. Malformed bodies (Hypothesis) pushed raw among good tasks. Pass: the worker never
    crashes or loops, each bad message is dead-lettered once with a reason, a pickle
    body is never loaded, good tasks complete."""
    outcome = Outcome("malformed", rig.backend.name)
    marker = rig.workdir / MARKER
    bodies = [*bad_bodies(examples), ("pickle", lambda _: marker_pickle(marker))]
    messages = [
        Message(mid, QUEUE, render(mid))
        for mid, (_, render) in zip((new_id() for _ in bodies), bodies, strict=False)
    ]
    kinds = dict(zip((m.id for m in messages), (k for k, _ in bodies), strict=True))
    keys = [f"g{i}" for i in range(good)]
    handles = await rig.tasks.work.enqueue_many([(k,) for k in keys[: good // 2]])
    await rig.producer.broker.push_messages(messages)
    handles += await rig.tasks.work.enqueue_many([(k,) for k in keys[good // 2 :]])
    worker = rig.workers.start(4)
    reasons = await _dead_lettered(rig, set(kinds), outcome)
    await rig.wait_final([h.id for h in handles], timeout=60)
    outcome.enqueued = good + len(messages)
    outcome.expect(worker.alive(), "the worker died")
    outcome.expect(not marker.exists(), "a pickle body was unpickled (marker file exists)")
    unexplained = sorted(kinds[i] for i, reason in reasons.items() if i in kinds and not reason)
    outcome.expect(not unexplained, f"dead letters without a reason: {unexplained}")
    extra = sorted(set(reasons) - set(kinds))
    outcome.expect(not extra, f"good tasks dead-lettered: {extra}")
    log = worker.output()
    settled = [line for line in log.splitlines() if "dead-lettered" in line]
    looped = sorted(kinds[i] for i in kinds if sum(i in line for line in settled) > 1)
    outcome.expect(not looped, f"messages dead-lettered more than once: {looped}")
    _log_problems(worker, outcome)
    await stop_cleanly(rig, outcome)
    await account(rig, outcome, keys, [h.id for h in handles])
    await nothing_left(rig, outcome, dead=len(messages))
    outcome.details.update(kinds=dict(Counter(kinds.values())))
    return outcome


async def oversize(
    rig: Rig, *, raw: int = 4, raw_bytes: int = 4 << 20, good: int = 20, rss_mb: float = 250
) -> Outcome:
    """8. Payloads above ``max_payload_bytes``. Pass: enqueue refuses with a clear error;
    bodies injected raw are dead-lettered, never run; worker memory stays bounded."""
    outcome = Outcome("oversize", rig.backend.name)
    limit = int(rig.settings["max_payload_bytes"])
    try:
        await rig.tasks.work.enqueue("too-big", pad="x" * limit)
        outcome.failures.append("enqueue above the limit was accepted")
    except PayloadTooLargeError as exc:
        outcome.expect(
            str(limit) in str(exc) and "max_payload_bytes" in str(exc), f"unclear error: {exc}"
        )
    stored = sum((await rig.producer.storage.counts()).values())
    outcome.expect(stored == 0, f"{stored} record(s) stored for a refused enqueue")
    roomy = Codec.json(max_payload_bytes=2 * raw_bytes)
    huge = [
        rig.producer.build_task("rel.work", [f"huge{i}"], {"pad": "x" * raw_bytes})
        for i in range(raw)
    ]
    messages = [Message(t.id, t.queue, roomy.encode(t)) for t in huge]
    try:
        await rig.producer.broker.push_messages(messages)
    except PayloadTooLargeError as exc:  # a backend may refuse them at the door: fine too
        outcome.details["raw push refused"] = str(exc)
        messages = []
    # A payload that fits, from a task that fails: its retry and its dead letter must fit
    # too, although the failure adds an error and a traceback to what the message carries.
    probe = rig.producer.build_task("rel.fail", ["near"], max_retries=1)
    room = limit - len(rig.producer.broker.codec.encode(probe)) - 200
    near = await rig.tasks.fail.options(max_retries=1).enqueue("near", pad="x" * room)
    keys = [f"g{i}" for i in range(good)]
    handles = await rig.tasks.work.enqueue_many([(k,) for k in keys])
    worker = rig.workers.start(4)
    reasons = await _dead_lettered(rig, {m.id for m in messages} | {near.id}, outcome)
    near_reason = reasons.pop(near.id, "")
    outcome.expect(
        near_reason.startswith("max_retries exceeded"), f"near-limit task: {near_reason!r}"
    )
    tries = len(rig.ledger.of("near"))
    outcome.expect(tries == 2, f"the near-limit task ran {tries} times, expected 2 (1 retry)")
    await rig.wait_final([h.id for h in handles], timeout=60)
    peak = worker.peak_rss_mb()
    outcome.enqueued = good + len(messages) + 2
    ran = sorted(k for k in rig.ledger.completed() if k.startswith("huge"))
    outcome.expect(not ran, f"oversize messages were run: {ran}")
    vague = [r for r in reasons.values() if str(limit) not in r]
    outcome.expect(not vague, f"dead-letter reasons do not name the limit: {vague[:2]}")
    if peak is not None:
        outcome.details["worker peak RSS (MB)"] = round(peak)
        outcome.expect(peak < rss_mb, f"worker peak RSS {peak:.0f} MB, bound {rss_mb} MB")
    _log_problems(worker, outcome)
    await stop_cleanly(rig, outcome)
    await account(rig, outcome, keys, [h.id for h in handles])
    await nothing_left(rig, outcome, dead=len(messages) + 1)
    return outcome


async def _refused(
    outcome: Outcome, what: str, call: Callable[[], Awaitable[Any] | Any], error: type[Exception]
) -> None:
    """``call`` must raise ``error`` with a short message naming the problem."""
    try:
        result = call()
        if isinstance(result, Awaitable):
            await result
    except error as exc:
        message = str(exc)
        outcome.expect(
            "invalid" in message and len(message) <= 400, f"{what}: unclear error {message[:120]!r}"
        )
    else:
        outcome.failures.append(f"{what}: accepted")


def _sqlite_schema(rig: Rig) -> list[tuple[Any, ...]]:
    if rig.backend.name != "sqlite":
        return []
    conn = sqlite3.connect(rig.url.removeprefix("sqlite:///"))
    try:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


Check = tuple[str, Callable[[], Any], type[Exception]]


def _entry_points(rig: Rig, name: str) -> list[Check]:
    """Every way a queue or task name gets in, each to be refused for ``name``."""
    broker = rig.producer.broker
    task = rig.producer.build_task("rel.work", ["k"])
    checks: list[Check] = [
        (
            "push to",
            lambda: broker.push_messages([Message(task.id, name, broker.codec.encode(task))]),
            InvalidNameError,
        ),
        ("reserve", lambda: broker.reserve([name], lease=1, timeout=0), InvalidNameError),
    ]
    if name:  # an empty name or queue means "not given": the default applies
        checks.append(("task", lambda: rig.producer.task(name=name)(_noop), InvalidNameError))
        checks.append(
            (
                "enqueue to",
                lambda: rig.tasks.work.options(queue=name).enqueue("k"),
                InvalidNameError,
            )
        )
    if name == name.strip():  # settings lists trim the blanks around each name
        checks.append(("settings", lambda: load_settings(queues=name), SettingsError))
    return checks


#: Valid names that look like the suffixes a backend may use for its own keys or tables.
LOOKALIKES = ["q", "q:dead", "q.dead", "q-dead", "q:q", "dead", "q:1", "Q"]


async def names(rig: Rig) -> Outcome:
    """12. Hostile queue and task names are refused with a clear error everywhere a name
    enters; valid look-alike names stay separate; tables and keys stay intact."""
    outcome = Outcome("names", rig.backend.name)
    broker = rig.producer.broker
    first = await rig.tasks.work.enqueue("before")
    schema = _sqlite_schema(rig)
    queues_before = await broker.queues()
    for name in HOSTILE_NAMES:
        for what, call, error in _entry_points(rig, name):
            await _refused(outcome, f"{what} {name[:20]!r}", call, error)
    raw: list[Message] = []
    for name in HOSTILE_NAMES:  # the same names inside bodies: dead-lettered, never run
        task_id = new_id()
        fields = {"id": task_id, "name": name, "payload": {"args": ["x"]}}
        raw.append(Message(task_id, QUEUE, b"application/json\n" + json.dumps(fields).encode()))
    await broker.push_messages(raw)
    handles = [first]
    for queue in LOOKALIKES:
        handles.append(await rig.tasks.work.options(queue=queue).enqueue(f"lookalike-{queue}"))
    for queue in LOOKALIKES:
        stats = await broker.stats(queue)
        outcome.expect(stats.ready == 1, f"queue {queue!r} holds {stats.ready} ready, expected 1")
    worker = rig.workers.start(4, settings_env({"queues": [QUEUE, *LOOKALIKES]}))
    await _dead_lettered(rig, {m.id for m in raw}, outcome)
    await rig.wait_final([h.id for h in handles], timeout=60)
    for queue in LOOKALIKES:
        left = await broker.stats(queue)
        outcome.expect(left.ready + left.reserved + left.dead == 0, f"queue {queue!r}: {left}")
    outcome.expect(
        set(await broker.queues()) - {QUEUE, *LOOKALIKES} == set(),
        f"queues now: {await broker.queues()} (before: {queues_before})",
    )
    outcome.expect(_sqlite_schema(rig) == schema, "the SQLite schema changed")
    _log_problems(worker, outcome)
    await stop_cleanly(rig, outcome)
    keys = ["before", *(f"lookalike-{q}" for q in LOOKALIKES)]
    await account(rig, outcome, keys, [h.id for h in handles])
    await nothing_left(rig, outcome, dead=len(raw))
    return outcome


def _noop() -> None:
    return None


def _pickle_codec() -> Codec:
    return Codec(
        {JSON: JsonSerializer(), PICKLE: PickleSerializer()},
        content_type=PICKLE,
        accept=[JSON, PICKLE],
    )


async def pickle_refused(rig: Rig) -> Outcome:
    """13. A body claiming the pickle content type is refused (dead-lettered, never loaded)
    unless the worker enables pickle in ``BGCOOR_ACCEPT_CONTENT``; then it runs."""
    outcome = Outcome("pickle", rig.backend.name)
    marker = rig.workdir / MARKER
    pickled = _pickle_codec()
    benign = rig.producer.build_task("rel.work", ["pickled-refused"])
    evil_id = new_id()
    await rig.producer.broker.push_messages(
        [
            Message(evil_id, QUEUE, marker_pickle(marker)),
            Message(benign.id, QUEUE, pickled.encode(benign)),
        ]
    )
    plain = rig.workers.start(2)
    reasons = await _dead_lettered(rig, {evil_id, benign.id}, outcome)
    outcome.expect(not marker.exists(), "a pickle body was unpickled by a JSON-only worker")
    outcome.expect(
        all(PICKLE in r and "refused" in r for r in reasons.values()), f"reasons: {reasons}"
    )
    _log_problems(plain, outcome)
    await stop_cleanly(rig, outcome)
    accepted = rig.producer.build_task("rel.work", ["pickled-accepted"])
    await rig.producer.storage.save(accepted)
    await rig.producer.broker.push_messages([Message(accepted.id, QUEUE, pickled.encode(accepted))])
    rig.workers.start(2, settings_env({"accept_content": [JSON, PICKLE]}))

    async def done() -> bool:
        record = await rig.producer.storage.get(accepted.id)
        return record is not None and record.status.is_final

    await wait_until(done, 30, "the pickled task runs on a pickle-enabled worker")
    await stop_cleanly(rig, outcome)
    runs = rig.ledger.completed()
    outcome.expect(runs["pickled-refused"] == 0, "the refused pickle task ran")
    outcome.expect(runs["pickled-accepted"] == 1, "the pickle-enabled worker did not run it")
    outcome.enqueued = 3
    outcome.lost = int(runs["pickled-accepted"] == 0)
    await nothing_left(rig, outcome, dead=2)
    return outcome
