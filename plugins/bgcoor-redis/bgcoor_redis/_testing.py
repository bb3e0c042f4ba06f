"""Throw-away namespaces on the local test Redis, for the conformance suite and our tests.

:func:`test_url` hands out a fresh key prefix on ``127.0.0.1:6379`` database 15
(databases 0 and 1 belong to the benchmark harness); the keys of every prefix handed out
are deleted when the process exits, and prefixes left behind by a crashed run are swept
once they are a few hours old. :func:`require_server` skips the calling test when that
server does not answer, or fails it when ``CI=true``.

Nothing here runs at import time, and pytest is imported only when a check fails.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
import uuid
from pathlib import Path

import redis

HOST, PORT, DB = "127.0.0.1", 6379, 15
ROOT = "bgcoor-test"
#: A prefix older than this is from a run that did not clean up (it crashed or was killed).
STALE_AFTER = 6 * 3600.0

_issued: dict[str, str] = {}  # tmp_path -> prefix
_checked: set[str] = set()


def server_url(db: int = DB, host: str = HOST, port: int = PORT) -> str:
    return f"redis://{host}:{port}/{db}"


def require_server(url: str = server_url()) -> None:
    """Skip the calling test unless Redis answers at ``url``; fail it instead under CI=true."""
    if url in _checked:
        return
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        import pytest

        where = url.split("://", 1)[-1].rsplit("/", 1)[0]
        message = f"Redis not reachable at {where}: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    finally:
        client.close()
    _checked.add(url)


def test_url(tmp_path: Path) -> str:
    """A Redis URL with a key prefix of its own for the test owning ``tmp_path``.

    The same ``tmp_path`` gets the same prefix (like a file in it would be the same file).
    """
    require_server()
    prefix = _issued.get(str(tmp_path))
    if prefix is None:
        if not _issued:
            atexit.register(_clean_up)
            _sweep(lambda _: False)  # only what crashed runs left behind
        prefix = f"{ROOT}:{int(time.time())}:{uuid.uuid4().hex[:12]}"
        _issued[str(tmp_path)] = prefix
    return f"{server_url()}?prefix={prefix}"


test_url.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


def _clean_up() -> None:
    issued = set(_issued.values())
    _issued.clear()
    with contextlib.suppress(redis.RedisError, OSError):
        _sweep(issued.__contains__)


def _sweep(ours: object) -> None:
    """Delete keys of prefixes for which ``ours(prefix)`` is true, or that are stale."""
    assert callable(ours)
    client = redis.Redis.from_url(server_url(), socket_connect_timeout=1, socket_timeout=10)
    try:
        now = time.time()
        doomed = []
        for key in client.scan_iter(match=f"{ROOT}:*", count=1000):
            name = key.decode("utf-8", "backslashreplace")  # corruption tests write any bytes
            prefix = ":".join(name.split(":", 3)[:3])
            stamp = prefix.split(":")[1]
            stale = stamp.isdigit() and now - int(stamp) > STALE_AFTER
            if ours(prefix) or stale:
                doomed.append(key)
        for start in range(0, len(doomed), 1000):
            client.unlink(*doomed[start : start + 1000])
    finally:
        client.close()
