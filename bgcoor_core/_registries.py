"""Typed registries handed to the register-style hooks."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

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
            raise DuplicateSchemeError(
                f"{self.kind} URL scheme {scheme!r} is claimed by two plugins: "
                f"{previous.plugin!r} and {self.current_plugin!r}"
            )
        self.entries[scheme] = BackendEntry(scheme, factory, self.current_plugin, test_url)

    def schemes(self) -> list[str]:
        return sorted(self.entries)

    def lookup(self, url: str) -> BackendEntry[B]:
        scheme = urlsplit(url).scheme.lower()
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
            raise PluginError(
                f"content type {ct!r} is provided by two plugins: {self.owners[ct]!r} and "
                f"{self.current_plugin!r}"
            )
        self.serializers[ct] = serializer
        self.owners[ct] = self.current_plugin


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to log)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
