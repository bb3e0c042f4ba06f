"""Payload codecs: steps a task's serialised values pass through (compression, encryption).

With ``BGCOOR_PAYLOAD_CODECS`` set (``"zstd,aesgcm"``), :meth:`Codec.seal
<bgcoor_core._codec.Codec.seal>` serialises a payload or result with the codec's serializer
and passes the bytes through each payload codec in order, giving an
:class:`~bgcoor_core.kit.Opaque` whose ``codecs`` names what was applied
(``"zstd,aesgcm:k2"``). Messages and records both carry that value, so records are
compressed and encrypted at rest while the envelope (name, queue, status) stays readable
by every process. :meth:`Codec.open <bgcoor_core._codec.Codec.open>` reverses the steps.

The built-in codecs import their libraries only when they are first used, so the core
imports without them: ``zstd`` (``pip install 'bgcoor[zstd]'``, the ``zstandard``
package) and ``aesgcm`` (``pip install 'bgcoor[encryption]'``, ``cryptography``). Plugins
add codecs with the ``bgcoor_register_payload_codecs`` hook.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import importlib
import importlib.util
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from ._errors import PluginError, SettingsError

if TYPE_CHECKING:
    from ._settings import Settings

#: A codec's name: what ``BGCOOR_PAYLOAD_CODECS`` lists and what a value's specs start with.
CODEC_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: An encryption key's id: named in every value it encrypts (``aesgcm:<id>``).
KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: What ``repr`` and JSON dumps of settings show instead of key material.
MASK = "**********"


@runtime_checkable
class PayloadCodec(Protocol):
    """One step a task's serialised value passes through: compression, encryption.

    ``name`` is what ``BGCOOR_PAYLOAD_CODECS`` lists (lower case, ``[a-z][a-z0-9_-]*``).

    ``encode(data)`` returns the new bytes and the *spec* that tells ``decode`` how to
    reverse them: the name, or the name, ``:`` and a parameter without ``,`` (``"aesgcm:k2"``:
    the key used). An empty spec means the codec left ``data`` as it was (a value below
    the compression threshold) and is not named in the value.

    ``decode(data, spec, limit)`` reverses ``encode``, raising ``ValueError`` saying why a
    value is refused: tampered with, sealed with a key this process does not hold, or
    larger than ``limit`` bytes once decoded (a codec that expands data stops there, so a
    small hostile value cannot exhaust memory). Neither method may show key material in
    its messages, and the codec's ``repr`` must not either. Both may be called from
    several threads at once.
    """

    name: str

    def encode(self, data: bytes) -> tuple[bytes, str]: ...

    def decode(self, data: bytes, spec: str, limit: int) -> bytes: ...


#: Builds a codec from the settings; raises (any exception, saying why) when it cannot
#: work here: a missing library, missing keys.
PayloadCodecFactory = Callable[["Settings"], PayloadCodec]


class PayloadCodecRegistry:
    """Payload codec factories by name, given to ``bgcoor_register_payload_codecs``."""

    def __init__(self) -> None:
        self.factories: dict[str, PayloadCodecFactory] = {}
        self.owners: dict[str, str] = {}
        self.current_plugin = "<programmatic>"

    def add(self, name: str, factory: PayloadCodecFactory) -> None:
        """Provide the codec ``name``: ``factory(settings)`` builds it when a process
        seals values with it (``BGCOOR_PAYLOAD_CODECS``) or first opens a value sealed
        with it."""
        if not isinstance(name, str) or not CODEC_NAME.fullmatch(name):
            raise PluginError(
                f"invalid payload codec name {name!r}: use 1-32 characters from a-z 0-9 _ -, "
                "starting with a letter"
            )
        if name in self.factories:
            first, second = sorted((self.owners[name], self.current_plugin))
            raise PluginError(
                f"payload codec {name!r} is provided by two plugins: {first!r} and {second!r}"
            )
        self.factories[name] = factory
        self.owners[name] = self.current_plugin

    def build(self, settings: Settings) -> tuple[tuple[PayloadCodec, ...], Openers]:
        """The chain ``BGCOOR_PAYLOAD_CODECS`` names, built now (a problem is a
        :class:`SettingsError` naming the setting), and the openers of every codec."""
        chain = tuple(self._chained(name, settings) for name in settings.payload_codecs)
        return chain, Openers(self.factories, settings, {c.name: c for c in chain})

    def _chained(self, name: str, settings: Settings) -> PayloadCodec:
        factory = self.factories.get(name)
        if factory is None:
            known = sorted(self.factories)
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SettingsError(
                f"BGCOOR_PAYLOAD_CODECS: unknown payload codec {name[:40]!r}; available: "
                f"{', '.join(known) or 'none'}{hint}"
            )
        try:
            codec = factory(settings)
        except SettingsError:
            raise
        except Exception as exc:
            raise SettingsError(f"BGCOOR_PAYLOAD_CODECS names {name}, but {exc}") from None
        if getattr(codec, "name", None) != name:
            raise PluginError(f"payload codec factory {name!r} built a codec of another name")
        return codec


class Openers:
    """The codecs a process opens values with, by name: the chain's, and any other
    registered one built on first need (a worker opens ``zstd`` values before its own
    producers compress). One that cannot be built here is remembered with the reason."""

    def __init__(
        self,
        factories: Mapping[str, PayloadCodecFactory],
        settings: Settings | None,
        built: Mapping[str, PayloadCodec],
    ) -> None:
        self._factories = factories
        self._settings = settings
        self._built: dict[str, PayloadCodec | str] = dict(built)
        self._lock = threading.Lock()

    def get(self, name: str) -> PayloadCodec:
        """The codec ``name``; ``ValueError`` saying why there is none here."""
        found = self._built.get(name)
        if found is None:
            found = self._build(name)
        if isinstance(found, str):
            raise ValueError(found)
        return found

    def _build(self, name: str) -> PayloadCodec | str:
        with self._lock:
            found = self._built.get(name)
            if found is not None:
                return found
            factory = self._factories.get(name)
            if factory is None or self._settings is None:
                found = f"no payload codec {name[:40]!r} is installed here"
            else:
                try:
                    found = factory(self._settings)
                except Exception as exc:
                    found = f"{name} is not available here: {exc}"
            self._built[name] = found
            return found


# -- zstd ------------------------------------------------------------------------------


class ZstdCodec:
    """Zstandard compression of values of at least ``threshold`` bytes (smaller ones,
    and ones that do not shrink, are left as they are). Decoding stops past its limit:
    a decompression bomb is refused, not expanded."""

    name = "zstd"

    def __init__(self, level: int = 3, threshold: int = 1024) -> None:
        self.level = level
        self.threshold = threshold
        self._local = threading.local()  # zstandard contexts are not thread-safe

    def __repr__(self) -> str:
        return f"ZstdCodec(level={self.level}, threshold={self.threshold})"

    def encode(self, data: bytes) -> tuple[bytes, str]:
        if len(data) < self.threshold:
            return data, ""
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = self._local.compressor = _zstandard().ZstdCompressor(level=self.level)
        packed: bytes = compressor.compress(data)
        if len(packed) >= len(data):
            return data, ""
        return packed, self.name

    def decode(self, data: bytes, spec: str, limit: int) -> bytes:
        if spec != self.name:
            raise ValueError(f"unknown zstd spec {spec[:40]!r}")
        zstd = _zstandard()
        try:
            declared = zstd.frame_content_size(data)
            if declared > limit:
                raise ValueError(_bomb(limit))
            return b"".join(_bounded_chunks(zstd, data, limit))
        except zstd.ZstdError as exc:
            raise ValueError(f"not valid zstd data ({exc})") from None


def _bounded_chunks(zstd: Any, data: bytes, limit: int) -> Iterator[bytes]:
    """The decompressed bytes, read at most ``limit + 1`` at a time; past ``limit`` a
    ``ValueError``. The frame's declared size is not trusted: it may lie."""
    reader = zstd.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    total = 0
    while chunk := reader.read(min(limit + 1 - total, 1 << 20)):
        total += len(chunk)
        if total > limit:
            raise ValueError(_bomb(limit))
        yield chunk


def _bomb(limit: int) -> str:
    return f"decompresses to more than {limit} bytes (the value limit): refused"


def _zstandard() -> Any:
    return _library("zstandard", "zstd")


def make_zstd(settings: Settings) -> ZstdCodec:
    """The ``zstd`` codec of ``BGCOOR_ZSTD_LEVEL`` and ``BGCOOR_COMPRESSION_THRESHOLD``."""
    _require("zstandard", "zstd")
    return ZstdCodec(settings.zstd_level, settings.compression_threshold)


# -- AES-GCM ---------------------------------------------------------------------------


class AesGcmCodec:
    """AES-256-GCM: each value encrypted under the newest key with a random 96-bit nonce
    (``nonce + ciphertext + tag``), its key id bound as associated data, so a value whose
    bytes or key id were changed is refused, never decrypted to something else. Every
    configured key opens the values of its own id (keys are rotated by adding one)."""

    name = "aesgcm"

    def __init__(self, keys: EncryptionKeys, newest: str | None = None) -> None:
        newest = newest or keys.newest
        if newest not in keys.ids:
            raise ValueError(f"key {newest!r} is not among the encryption keys")
        self.keys = keys
        self.newest = newest
        self._spec = f"{self.name}:{newest}"
        self._ciphers: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"AesGcmCodec(keys={list(self.keys.ids)}, newest={self.newest!r})"

    def encode(self, data: bytes) -> tuple[bytes, str]:
        nonce = os.urandom(NONCE_BYTES)
        sealed: bytes = self._cipher(self.newest).encrypt(nonce, data, _bound(self.newest))
        return nonce + sealed, self._spec

    def decode(self, data: bytes, spec: str, limit: int) -> bytes:
        name, _, key_id = spec.partition(":")
        if name != self.name or not KEY_ID.fullmatch(key_id):
            raise ValueError(f"malformed aesgcm spec {spec[:80]!r}: no key id")
        if key_id not in self.keys.ids:
            raise ValueError(
                f"encrypted (key {key_id}), which this process does not hold "
                f"(BGCOOR_ENCRYPTION_KEYS has {', '.join(self.keys.ids)})"
            )
        if len(data) < NONCE_BYTES + TAG_BYTES:
            raise ValueError(f"encrypted (key {key_id}) but too short to be a sealed value")
        if len(data) - NONCE_BYTES - TAG_BYTES > limit:
            raise ValueError(f"encrypted value larger than {limit} bytes (the value limit)")
        cipher = self._cipher(key_id)
        try:
            opened: bytes = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _bound(key_id))
        except _library("cryptography.exceptions", "encryption").InvalidTag:
            raise ValueError(
                f"encrypted (key {key_id}) but fails authentication: its bytes or its key id "
                "were changed"
            ) from None
        return opened

    def _cipher(self, key_id: str) -> Any:
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            aead = _library("cryptography.hazmat.primitives.ciphers.aead", "encryption")
            cipher = self._ciphers[key_id] = aead.AESGCM(self.keys.secret(key_id))
        return cipher


def _bound(key_id: str) -> bytes:
    """The associated data of a value encrypted under ``key_id``."""
    return b"bgcoor:aesgcm:" + key_id.encode("ascii")


def make_aesgcm(settings: Settings) -> AesGcmCodec:
    """The ``aesgcm`` codec of ``BGCOOR_ENCRYPTION_KEYS`` (``BGCOOR_ENCRYPTION_KEY_ID``:
    the key new values use, by default the last listed)."""
    _require("cryptography", "encryption")
    keys = settings.encryption_keys
    if keys is None:
        raise ValueError("BGCOOR_ENCRYPTION_KEYS is not set")
    return AesGcmCodec(keys, settings.encryption_key_id)


class EncryptionKeys:
    """Encryption keys by id, oldest first, the newest last; never shown: ``repr``,
    ``str`` and JSON dumps of the settings name the ids only.

    Read from ``BGCOOR_ENCRYPTION_KEYS`` as ``k1:<base64>,k2:<base64>`` or as a JSON object
    ``{"k1": "<base64>", "k2": "<base64>"}``; each key is 32 random bytes (AES-256)::

        python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        if not keys:
            raise ValueError("no keys given: use id:<base64 of 32 bytes>, comma-separated")
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
                raise ValueError(
                    f"invalid key id {str(key_id)[:70]!r}: use 1-64 characters from "
                    "A-Z a-z 0-9 _ . -"
                )
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ValueError(_not_a_key(key_id, key))
        self._keys = dict(keys)

    @classmethod
    def parse(cls, text: str) -> EncryptionKeys:
        """``k1:<base64>,k2:<base64>`` or a JSON object of ids to base64 keys."""
        text = text.strip()
        if text.startswith("{"):
            try:
                found = json.loads(text)
            except ValueError:
                raise ValueError("not a valid JSON object of key ids to base64 keys") from None
            if not isinstance(found, dict):
                raise ValueError("not a JSON object of key ids to base64 keys")
            pairs = list(found.items())
        else:
            pairs = []
            for part in filter(None, (p.strip() for p in text.split(","))):
                key_id, sep, encoded = part.partition(":")
                if not sep:
                    raise ValueError(
                        f"entry {len(pairs) + 1} has no id: use id:<base64>, comma-separated"
                    )
                pairs.append((key_id.strip(), encoded.strip()))
        if len({key_id for key_id, _ in pairs}) != len(pairs):
            raise ValueError("a key id is listed twice")
        return cls({key_id: _key_bytes(key_id, encoded) for key_id, encoded in pairs})

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @property
    def newest(self) -> str:
        return next(reversed(self._keys))

    def secret(self, key_id: str) -> bytes:
        """The key of ``key_id`` (``KeyError`` if there is none)."""
        return self._keys[key_id]

    def __repr__(self) -> str:
        return f"EncryptionKeys({', '.join(self._keys)}: {MASK})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EncryptionKeys) and other._keys == self._keys

    def __hash__(self) -> int:
        return hash(tuple(self._keys.items()))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        # Python dumps keep the object (its repr is masked); JSON dumps show the ids only.
        return core_schema.no_info_plain_validator_function(
            _validate_keys,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _masked, when_used="json"
            ),
        )


def _masked(keys: EncryptionKeys) -> dict[str, str]:
    return dict.fromkeys(keys.ids, MASK)


def _validate_keys(value: Any) -> EncryptionKeys:
    if isinstance(value, EncryptionKeys):
        return value
    if isinstance(value, str):
        return EncryptionKeys.parse(value)
    if isinstance(value, Mapping):
        return EncryptionKeys(
            {
                key_id: key if isinstance(key, bytes) else _key_bytes(key_id, key)
                for key_id, key in value.items()
            }
        )
    raise ValueError("use id:<base64>,... or a JSON object of key ids to base64 keys")


def _key_bytes(key_id: Any, encoded: Any) -> bytes:
    """A base64 (standard or URL-safe alphabet) key's bytes; the message never shows it."""
    shown = str(key_id)[:70]
    if not isinstance(encoded, str):
        raise ValueError(f"key {shown!r} is not base64 text")
    try:
        if "-" in encoded or "_" in encoded:
            key = base64.urlsafe_b64decode(encoded.encode("ascii"))
        else:
            key = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError(f"key {shown!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(_not_a_key(shown, key))
    return key


def _not_a_key(key_id: str, key: object) -> str:
    size = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
    return (
        f"key {key_id!r} is not {KEY_BYTES} bytes of base64 (it is {size}); make one with "
        "python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"
    )


# -- shared ----------------------------------------------------------------------------

_EXTRAS = {"zstd": "zstandard", "encryption": "cryptography"}


def _require(module: str, extra: str) -> None:
    """Fail now, naming the extra to install, when ``module`` is missing (nothing is
    imported: a codec's library loads when it is first used)."""
    if importlib.util.find_spec(module) is None:
        raise ModuleNotFoundError(
            f"it needs the {_EXTRAS[extra]} package: pip install 'bgcoor[{extra}]'"
        )


def _library(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ValueError(
            f"it needs the {_EXTRAS[extra]} package: pip install 'bgcoor[{extra}]'"
        ) from None


#: The codecs of the core, registered before any plugin's.
BUILT_IN: Sequence[tuple[str, PayloadCodecFactory]] = (("zstd", make_zstd), ("aesgcm", make_aesgcm))
