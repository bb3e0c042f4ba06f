"""Can the broker and storage servers be reached? Asked once by every one-off command.

A backend rides out a server restart by retrying its connection (the PostgreSQL backend
for up to ``reconnect_timeout``, 60 s; redis-py a few times with backoff): right for a
worker, but a one-off command such as ``bgcoor status`` would sit there for a minute and
then print a bare ``ConnectionRefusedError``. So before such a command uses its backends,
it opens (and closes) one TCP connection to each server named in the URLs, at most
:data:`CONNECT_TIMEOUT` seconds each, and an unreachable one is an error naming the
setting: ``BGCOOR_BROKER_URL: cannot connect to 127.0.0.1:6380 (ConnectionRefusedError)``.

In-process backends (``memory://``, ``sqlite://``) and URLs without a host, or without a
port this module can tell (:data:`DEFAULT_PORTS`), are not probed.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import urlsplit

from .._settings import Settings
from ._output import CliError

#: Seconds a probe waits for one server to accept a connection.
CONNECT_TIMEOUT = 3.0
#: Ports of the schemes whose URLs may leave the port out.
DEFAULT_PORTS = {"redis": 6379, "rediss": 6379, "postgresql": 5432, "postgres": 5432}
#: Schemes served inside this process: nothing to reach.
IN_PROCESS = frozenset({"memory", "sqlite"})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server a setting's URL names."""

    setting: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def endpoints(setting: str, url: str) -> list[Endpoint]:
    """The servers of ``url`` (several for a multi-host PostgreSQL URL), or none when it
    names no host or a port this module cannot tell."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []  # the backend lookup reports a malformed URL better
    scheme = parts.scheme.lower()
    if scheme in IN_PROCESS or not parts.netloc:
        return []
    hosts = parts.netloc.rpartition("@")[2]
    found = []
    for host in hosts.split(","):
        try:
            single = urlsplit(f"//{host}")
            port = single.port or DEFAULT_PORTS.get(scheme)
        except ValueError:
            return []
        if single.hostname and port:
            found.append(Endpoint(setting, single.hostname, port))
    return found


async def _reachable(endpoint: Endpoint) -> str | None:
    """``None`` if ``endpoint`` accepts a TCP connection, else why not."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
    except TimeoutError:
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    except OSError as exc:
        return type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):  # the server hung up first: it was there
        await writer.wait_closed()
    return None


async def check_reachable(settings: Settings) -> None:
    """Raise :class:`CliError` naming the setting of the first URL whose servers all
    refuse, or do not answer, a connection (a multi-host URL needs one of them)."""
    urls = {"BGCOOR_BROKER_URL": settings.broker_url}
    if settings.storage_url != settings.broker_url:  # one server: probe it once
        urls["BGCOOR_STORAGE_URL"] = settings.storage_url
    for setting, url in urls.items():
        group = endpoints(setting, url)
        problems = await asyncio.gather(*(_reachable(endpoint) for endpoint in group))
        if group and all(problems):
            raise CliError(f"{setting}: cannot connect to {group[0]} ({problems[0]})")
