"""Parsing ``redis://`` and ``rediss://`` URLs and their query options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from bgcoor_core import ConfigurationError
from bgcoor_core.kit import redact

SCHEMES = ("redis", "rediss")
TLS_OPTIONS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


class RedisOptions(BaseModel):
    """Options in the URL query string, e.g. ``redis://127.0.0.1:6379/0?prefix=shop``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Namespace of every key, so several applications (or test runs) share one database.
    prefix: str = Field(default="bgcoor", pattern=r"^[A-Za-z0-9_.:{}-]{1,100}$")
    #: Auto-pipelined connections the commands of a process (of one event loop) share. One
    #: batch is on the wire per connection; more overlap server and client work, which
    #: pays off over a network with a longer round trip than loopback.
    pipelines: int = Field(default=1, ge=1, le=64)
    #: Connections a process keeps open for consumers blocked waiting for work (each
    #: blocked ``reserve`` holds one).
    max_connections: int = Field(default=50, ge=1, le=10_000)
    #: Seconds a reply may take before the connection is considered dead.
    socket_timeout: float = Field(default=30.0, gt=0)
    socket_connect_timeout: float = Field(default=5.0, gt=0)
    #: Longest single blocking wait for a wake-up before a consumer looks again anyway.
    max_block: float = Field(default=5.0, gt=0)
    #: ``result()`` polls the record from 1 ms up to this interval (seconds) when notices
    #: of finished tasks cannot be had (the subscription failed).
    result_poll_max: float = Field(default=0.02, gt=0)
    #: ``result()`` is woken by a notice when the task finishes, and looks at the record
    #: this often (seconds) anyway, in case a notice was lost with a connection.
    result_safety_poll: float = Field(default=1.0, gt=0)
    client_name: str | None = Field(default=None, pattern=r"^[!-~]{1,100}$")
    # TLS (rediss:// only), passed to redis-py.
    ssl_cert_reqs: Literal["none", "optional", "required"] = "required"
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where to connect, parsed from a URL; makes connections on demand."""

    url: str
    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    options: RedisOptions

    @property
    def safe_url(self) -> str:
        """The URL without its password (for logs and errors)."""
        return redact(self.url)

    def connection_factory(self) -> Callable[[], AbstractConnection]:
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
            # Replies are awaited under our own per-batch deadline (see _channel.py).
            "socket_timeout": None,
            "socket_connect_timeout": self.options.socket_connect_timeout,
            "socket_keepalive": True,
            "protocol": 2,  # RESP2, which _resp.py parses
            "client_name": self.options.client_name,
            # Connecting retries briefly; commands are never retried blindly (a script
            # whose reply was lost may have run), callers decide.
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
        }
        cls: type[AbstractConnection] = Connection
        if self.tls:
            cls = SSLConnection
            kwargs.update({name: getattr(self.options, name) for name in TLS_OPTIONS})

        def make() -> AbstractConnection:
            return cls(**kwargs)

        return make


def parse_redis_url(url: str) -> RedisTarget:
    """``redis[s]://[[user]:password@]host[:port][/db][?option=value&...]``."""
    parts = urlsplit(url)
    safe = redact(url)
    if parts.scheme not in SCHEMES:
        raise ConfigurationError(f"not a Redis URL: {safe!r} (use redis:// or rediss://)")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigurationError(f"Redis URL {safe!r}: the port is not a number") from None
    db_text = parts.path.lstrip("/") or "0"
    if not db_text.isdigit():
        raise ConfigurationError(f"Redis URL {safe!r}: the database {db_text!r} is not a number")
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = [name for name, _ in query]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigurationError(f"Redis URL {safe!r}: option(s) given twice: {repeated}")
    options = _options(safe, dict(query))
    if parts.scheme == "redis":
        misplaced = sorted(set(names) & set(TLS_OPTIONS))
        if misplaced:
            raise ConfigurationError(
                f"Redis URL {safe!r}: {', '.join(misplaced)} only apply to rediss:// (TLS)"
            )
    return RedisTarget(
        url=url,
        tls=parts.scheme == "rediss",
        host=parts.hostname or "127.0.0.1",
        port=port,
        db=int(db_text),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        options=options,
    )


def _options(safe_url: str, query: dict[str, str]) -> RedisOptions:
    try:
        return RedisOptions.model_validate(query)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            name = ".".join(map(str, error["loc"])) or "options"
            msg = "unknown option" if error["type"] == "extra_forbidden" else error["msg"]
            problems.append(f"{name}: {msg}")
        raise ConfigurationError(
            f"invalid Redis URL options in {safe_url!r}: {'; '.join(problems)}"
        ) from None
