"""Typed registries handed to the register-style hooks."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import unquote_plus, urlsplit

from ._broker import Broker
from ._codec import Codec, Serializer
from ._errors import DuplicateSchemeError, PluginError, UnknownSchemeError
from ._storage import Storage

if TYPE_CHECKING:
    from ._settings import Settings


@dataclass(frozen=True, slots=True)
class BackendContext:
    """What a backend factory receives besides its URL."""

    settings: Settings
    codec: Codec


B = TypeVar("B")
Factory = Callable[[str, BackendContext], B]
TestUrl = Callable[[Path], str]


@dataclass(frozen=True, slots=True)
class BackendEntry(Generic[B]):
    scheme: str
    factory: Factory[B]
    plugin: str
    test_url: TestUrl | None = None


class _BackendRegistry(Generic[B]):
    kind = "backend"

    def __init__(self) -> None:
        self.entries: dict[str, BackendEntry[B]] = {}
        self.current_plugin = "<programmatic>"

    def add(self, scheme: str, factory: Factory[B], *, test_url: TestUrl | None = None) -> None:
        """Serve URLs with ``scheme`` (``scheme://...``) by calling ``factory(url, context)``."""
        scheme = scheme.lower()
        previous = self.entries.get(scheme)
        if previous is not None:
            first, second = sorted((previous.plugin, self.current_plugin))
            raise DuplicateSchemeError(
                f"{self.kind} URL scheme {scheme!r} is claimed by two plugins: "
                f"{first!r} and {second!r}"
            )
        self.entries[scheme] = BackendEntry(scheme, factory, self.current_plugin, test_url)

    def schemes(self) -> list[str]:
        return sorted(self.entries)

    def lookup(self, url: str) -> BackendEntry[B]:
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError:  # e.g. an unbalanced "[" in the host: still name the scheme
            scheme = url.partition(":")[0].lower()
        entry = self.entries.get(scheme)
        if entry is not None:
            return entry
        available = self.schemes()
        close = difflib.get_close_matches(scheme, available, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownSchemeError(
            f"no {self.kind} for URL scheme {scheme or '(none)'!r} in {redact(url)!r}; "
            f"available: {', '.join(available) or 'none'}{hint}"
        )


class BrokerRegistry(_BackendRegistry[Broker]):
    kind = "broker"


class StorageRegistry(_BackendRegistry[Storage]):
    kind = "storage"


class SerializerRegistry:
    """Serializers by content type."""

    def __init__(self) -> None:
        self.serializers: dict[str, Serializer] = {}
        self.owners: dict[str, str] = {}
        self.current_plugin = "<programmatic>"

    def add(self, serializer: Serializer) -> None:
        ct = serializer.content_type
        if ct in self.serializers:
            first, second = sorted((self.owners[ct], self.current_plugin))
            raise PluginError(
                f"content type {ct!r} is provided by two plugins: {first!r} and {second!r}"
            )
        self.serializers[ct] = serializer
        self.owners[ct] = self.current_plugin


#: Query-string keys whose values are credentials, matched case-insensitively as whole
#: names or as parts of one (``sslpassword``, ``aws_secret_access_key``, ``auth_token``).
SECRET_QUERY_WORDS = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "access_key",
    "private_key",
    "credential",
    "auth",
)
MASK = "***"


def redact(url: str) -> str:
    """``url`` safe to show and log: a userinfo password and the value of every secret
    query-string key (:data:`SECRET_QUERY_WORDS`) replaced by ``***``.

    Plain string surgery, not ``urlsplit``/``geturl``: it never raises, leaves every other
    character as written (``memory://?x`` stays ``memory://?x``), and still finds a
    password holding an unencoded ``/``, where a parser would take it for the path.
    """
    base, hash_sign, fragment = url.partition("#")
    head, question_mark, query = base.partition("?")
    scheme, sep, rest = head.partition("://")
    if sep:
        head = scheme + sep + _redact_userinfo(rest)
    return head + question_mark + _redact_query(query) + hash_sign + fragment


def _redact_userinfo(rest: str) -> str:
    """``user:password@host/path`` as ``user:***@host/path``; a user name alone is shown."""
    if rest.startswith("/") or "@" not in rest:
        return rest  # no authority (sqlite:////abs/path), or no userinfo
    userinfo, _, host = rest.rpartition("@")
    if ":" not in userinfo:
        return rest
    return f"{userinfo.partition(':')[0]}:{MASK}@{host}"


def _redact_query(query: str) -> str:
    if not query:
        return query
    pairs = []
    for pair in query.split("&"):
        key, eq, _ = pair.partition("=")
        name = unquote_plus(key).lower()
        pairs.append(f"{key}={MASK}" if eq and _is_secret(name) else pair)
    return "&".join(pairs)


def _is_secret(name: str) -> bool:
    return any(word in name for word in SECRET_QUERY_WORDS)
