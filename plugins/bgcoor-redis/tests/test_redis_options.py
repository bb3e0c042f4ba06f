"""URLs, options and registration: everything that needs no server."""

from __future__ import annotations

import re

import pytest
from bgcoor_redis import MAX_PRIORITY, MIN_PRIORITY, RedisBackend, parse_redis_url
from bgcoor_redis._encoding import message_args
from bgcoor_redis._scripts import common_source, scripts
from redis.asyncio.connection import Connection, SSLConnection

from bgcoor_core import (
    ALLOWED_TRANSITIONS,
    CapabilityError,
    ConfigurationError,
    Message,
    build_plugin_host,
)


def test_defaults() -> None:
    target = parse_redis_url("redis://localhost")
    assert (target.host, target.port, target.db, target.tls) == ("localhost", 6379, 0, False)
    assert target.options.prefix == "bgcoor"
    assert (target.username, target.password) == (None, None)


def test_every_part_of_the_url() -> None:
    target = parse_redis_url(
        "rediss://app:p%40ss@cache.internal:6380/3?prefix=shop&max_connections=8"
        "&ssl_cert_reqs=none&client_name=worker-1"
    )
    assert (target.host, target.port, target.db, target.tls) == ("cache.internal", 6380, 3, True)
    assert (target.username, target.password) == ("app", "p@ss")
    assert target.options.prefix == "shop"
    assert target.options.max_connections == 8
    assert target.options.ssl_cert_reqs == "none"
    assert target.options.client_name == "worker-1"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h/0?colour=blue", "colour: unknown option"),
        ("redis://h/0?prefix=", "prefix"),
        ("redis://h/0?prefix=a%20b", "prefix"),
        ("redis://h/0?max_connections=0", "max_connections"),
        ("redis://h/0?socket_timeout=never", "socket_timeout"),
        ("redis://h/0?prefix=a&prefix=b", "given twice"),
        ("redis://h/zero", "database 'zero' is not a number"),
        ("redis://h:port/0", "port is not a number"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "only apply to rediss://"),
        ("memcached://h/0", "not a Redis URL"),
    ],
)
def test_bad_urls_name_the_problem(url: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(problem)):
        parse_redis_url(url)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_url("redis://user:hunter2@h/0?colour=blue")
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)
    backend = RedisBackend("redis://user:hunter2@h/0")
    assert "hunter2" not in repr(backend)


def test_tls_urls_make_tls_connections() -> None:
    plain = parse_redis_url("redis://h/0").connection_factory()()
    tls = parse_redis_url("rediss://h/0?ssl_cert_reqs=none").connection_factory()()
    assert type(plain) is Connection
    assert isinstance(tls, SSLConnection)


def test_registered_for_both_schemes_and_both_roles() -> None:
    host = build_plugin_host()
    for registry in (host.brokers, host.storages):
        for scheme in ("redis", "rediss"):
            assert registry.entries[scheme].plugin == "redis"
        assert registry.entries["redis"].test_url is not None
        assert registry.entries["rediss"].test_url is None  # needs certificates


def test_priority_outside_the_range_is_refused() -> None:
    body = b"application/json\n{}"
    for priority in (MIN_PRIORITY, 0, MAX_PRIORITY):
        assert message_args(Message("id", "q", body, priority))[3] == priority
    for priority in (MIN_PRIORITY - 1, MAX_PRIORITY + 1, 10**9):
        with pytest.raises(CapabilityError, match="priorities from -1000 to 1000"):
            message_args(Message("id", "q", body, priority))


def test_transition_table_is_generated_from_the_core() -> None:
    line = next(s for s in common_source().splitlines() if s.startswith("local ALLOWED"))
    pairs = set(re.findall(r"(\w+)>(\w+)", line))
    expected = {(old.value, new.value) for old, news in ALLOWED_TRANSITIONS.items() for new in news}
    assert pairs == expected


def test_scripts_are_complete_and_carry_their_hash() -> None:
    loaded = scripts()
    for name, script in loaded.items():
        assert f"-- {name}.lua" in script.source.decode()
        assert "@" not in script.source.decode().split("-- Records")[0], "unfilled placeholder"
        assert len(script.sha) == 40
    assert len({s.sha for s in loaded.values()}) == len(loaded)
