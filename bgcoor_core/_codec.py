"""Turning tasks into message bodies and back.

A body is ``<content type> b"\\n" <serialised task>``. The content type names the
serializer; a body whose content type is not accepted is refused *before* it is parsed,
which is what keeps a pickle payload from ever being unpickled unless pickle was
explicitly enabled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError
from pydantic_core import from_json, to_json

from ._errors import DecodeError, PayloadError, PayloadTooLargeError
from ._handlers import SECRET_MASK, refuse_secrets_in_payload
from ._task import MESSAGE_FORMAT, Task
from ._text import printable as printable  # re-exported: backends import it from here
from ._values import Opaque, UnrepresentableError, pack, unpack

JSON = "application/json"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_MASK = SECRET_MASK.encode()
DEFAULT_MAX_RESULT_BYTES = 10 * 1024 * 1024


@runtime_checkable
class Serializer(Protocol):
    """A message format: a task's fields to bytes and back.

    ``dumps`` receives a dict of the task's fields as Python values: the envelope (text,
    numbers, ``None``, aware ``datetime`` timestamps, a dict of text headers, and fields a
    newer version added) and, under ``payload`` and ``result``, the caller's values as
    they are: lists, tuples, dicts with keys of any hashable type, and the rich values of
    :mod:`bgcoor_core._values` (``datetime``, ``date``, ``time``, ``timedelta``, ``UUID``,
    ``Decimal``, ``bytes``, ``set``, ``frozenset``, non-finite floats) nested in them, with
    enums, dataclasses and pydantic models to be carried as :func:`~bgcoor_core.kit.reduce`
    makes them. ``loads`` returns that dict with the rich values rebuilt: every one of them
    must round-trip (``SerializerContract`` checks it). Raise ``TypeError`` or
    ``ValueError`` naming what cannot be carried.

    Optional attributes: ``name``, the short name ``BGCOOR_SERIALIZER`` may use
    (``"msgpack"``); ``trusted_only = True`` for a format whose loading runs code
    (pickle), left out of the accepted content types unless ``BGCOOR_ACCEPT_CONTENT``
    names it; ``carries_objects = True`` for one that carries any object, so a value
    no tag describes is sealed whole into an :class:`~bgcoor_core.kit.Opaque` in records.
    """

    content_type: str

    def dumps(self, data: Any) -> bytes: ...

    def loads(self, raw: bytes) -> Any: ...


class JsonSerializer:
    """JSON, the default: tasks go through pydantic-core's Rust encoder and parser in one
    step (rich values tagged, see :mod:`bgcoor_core._values`); ``dumps`` and ``loads``
    serve other data, tagged the same way."""

    content_type = JSON
    name = "json"

    def dumps(self, data: Any) -> bytes:
        return to_json(pack(data))

    def loads(self, raw: bytes) -> Any:
        return unpack(from_json(raw))


def fields_of(task: Task) -> dict[str, Any]:
    """The task's fields as they are (no copy of its values): what a serializer dumps."""
    data = dict(task.__dict__)
    if task.__pydantic_extra__:
        data.update(task.__pydantic_extra__)
    return data


class Codec:
    """Encodes tasks with one serializer and decodes any *accepted* content type."""

    @classmethod
    def json(cls, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Codec:
        """JSON only: what backends use when constructed without a codec."""
        return cls({JSON: JsonSerializer()}, max_payload_bytes=max_payload_bytes)

    def __init__(
        self,
        serializers: Mapping[str, Serializer],
        *,
        content_type: str = JSON,
        accept: Iterable[str] | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        content_type = resolve_content_type(serializers, content_type)
        if accept is None:  # every format installed but those whose loading runs code
            accept = [ct for ct, s in serializers.items() if not getattr(s, "trusted_only", False)]
        accepted = frozenset(resolve_content_type(serializers, ct) for ct in accept)
        self.content_type = content_type
        self.max_payload_bytes = max_payload_bytes
        self._serializer = serializers[content_type]
        self._seals = bool(getattr(self._serializer, "carries_objects", False))
        self._accepted = {ct: serializers[ct] for ct in accepted | {content_type}}
        self._prefix = content_type.encode() + b"\n"

    @property
    def serializer(self) -> Serializer:
        """The serializer new messages are written with."""
        return self._serializer

    @property
    def accepted(self) -> frozenset[str]:
        """The content types this codec decodes."""
        return frozenset(self._accepted)

    def encode(self, task: Task) -> bytes:
        """Serialise ``task``; raises :class:`PayloadError` naming what cannot be encoded."""
        try:
            if self.content_type == JSON:
                body = task.model_dump_json().encode()
            else:
                if self._seals:
                    task.payload = self.seal(task.payload)
                body = self._serializer.dumps(fields_of(task))
        except (TypeError, ValueError) as exc:
            refuse_secrets_in_payload(task.name, task.payload)  # the clearer error, if so
            raise PayloadError(
                f"task {task.name!r} cannot be serialised as {self.content_type}: "
                f"{_problem_of(exc)}"
            ) from None
        if _MASK in body:  # a byte search; only a body holding the mask is looked into
            refuse_secrets_in_payload(task.name, task.payload)
        data = self._prefix + body
        if len(data) > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"task {task.name!r} is {len(data)} bytes encoded, above the limit of "
                f"{self.max_payload_bytes} bytes (max_payload_bytes)"
            )
        return data

    def decode(self, data: bytes) -> Task:
        """Parse a body made by :meth:`encode`; raises :class:`DecodeError` saying why not.

        A body above ``max_payload_bytes`` is refused unparsed, like one ``encode`` refuses:
        the limit holds for messages written by any producer, not only by this codec.
        """
        if len(data) > self.max_payload_bytes:
            raise DecodeError(
                f"refused message of {len(data)} bytes, above the limit of "
                f"{self.max_payload_bytes} bytes (max_payload_bytes)"
            )
        content_type, sep, body = data.partition(b"\n")
        if not sep:
            raise DecodeError("malformed message: no content-type header")
        try:
            ct = content_type.decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError("malformed message: content type is not ASCII") from None
        serializer = self._accepted.get(ct)
        if serializer is None:
            raise DecodeError(
                f"refused message with content type {printable(ct, 60)!r}: not accepted "
                f"(BGCOOR_ACCEPT_CONTENT: {', '.join(sorted(self._accepted))})"
            )
        try:
            if ct == JSON:
                task = Task.model_validate_json(body)
            else:
                task = Task.model_validate(serializer.loads(body))
        except ValidationError as exc:
            raise DecodeError(f"malformed message: {_summarise(exc)}") from None
        except Exception as exc:
            problem = printable(f"{type(exc).__name__}: {exc}", 300)
            raise DecodeError(f"malformed message: {problem}") from None
        if task.model_extra:
            _check_extra_fields(task.model_extra)
        if task.format > MESSAGE_FORMAT:
            raise DecodeError(
                f"message format {task.format} is newer than this worker understands "
                f"({MESSAGE_FORMAT}): upgrade bg-coor on the workers"
            )
        return task

    def seal(self, value: Any) -> Any:
        """``value``, or when no tag describes it and this codec's format carries any
        object (pickle), the value sealed whole into an :class:`Opaque` of that format:
        what a record (always JSON) holds in its place."""
        if value is None or not self._seals:
            return value
        try:
            pack(value)
        except UnrepresentableError:
            return Opaque(self.content_type, self._serializer.dumps(value))
        return value

    def open(self, value: Any) -> Any:
        """A sealed value's content, loaded only if its content type is accepted; any
        other value as it is. Raises :class:`DecodeError` naming a refused type."""
        if type(value) is not Opaque:
            return value
        serializer = self._accepted.get(value.content_type)
        if serializer is None:
            raise DecodeError(
                f"refused value of content type {printable(value.content_type, 60)!r}: not "
                f"accepted (BGCOOR_ACCEPT_CONTENT: {', '.join(sorted(self._accepted))})"
            )
        try:
            return serializer.loads(value.data)
        except Exception as exc:
            problem = printable(f"{type(exc).__name__}: {exc}", 300)
            raise DecodeError(f"malformed {value.content_type} value: {problem}") from None

    def check_result(self, name: str, result: Any, limit: int) -> Any:
        """A handler's result as its record will hold it (sealed if need be), refused with
        :class:`PayloadError` when no format here carries it or when it is larger than
        ``limit`` bytes in the record."""
        if result is None:
            return None
        result = self.seal(result)
        try:
            size = len(to_json(pack(result)))
        except (TypeError, ValueError) as exc:
            raise PayloadError(
                f"task {name!r} returned an unserialisable result: {_problem_of(exc)}"
            ) from None
        if size > limit:
            raise PayloadTooLargeError(
                f"task {name!r} returned a result of {size} bytes encoded, above the "
                f"limit of {limit} bytes (BGCOOR_MAX_RESULT_BYTES)"
            )
        return result


def resolve_content_type(serializers: Mapping[str, Serializer], name: str) -> str:
    """The content type ``name`` means: a content type, or a serializer's short name
    (``json``, ``pickle``, ``msgpack``); :class:`PayloadError` naming the choices."""
    if name in serializers:
        return name
    for content_type, serializer in serializers.items():
        if getattr(serializer, "name", None) == name:
            return content_type
    known = sorted(
        f"{getattr(s, 'name', '')} ({ct})" if getattr(s, "name", None) else ct
        for ct, s in serializers.items()
    )
    raise PayloadError(
        f"no serializer for {printable(name, 80)!r} (BGCOOR_SERIALIZER or "
        f"BGCOOR_ACCEPT_CONTENT); installed: {', '.join(known)}"
    )


def _problem_of(exc: BaseException) -> str:
    """What a serializer said, without pydantic's wrapping of a hook's error."""
    text = str(exc)
    marker = "UnrepresentableError: "
    if marker in text:
        text = text[text.index(marker) + len(marker) :]
    if "has no representation" in text:
        text += " (pass a dataclass or a pydantic model, or enable pickle)"
    return printable(text, 300)


#: What a field added by a newer version looks like; anything else is a malformed body.
_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")


def _check_extra_fields(extra: dict[str, Any]) -> None:
    """Fields this version does not know are kept (forward compatibility), but only if
    they are named like a field: a hostile name (a NUL, an escape) would reach logs and
    text columns."""
    for name in extra:
        if not _FIELD_NAME.fullmatch(name):
            raise DecodeError(f"malformed message: unknown field {printable(repr(name), 80)}")


def _summarise(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = [
        f"{printable('.'.join(map(str, e['loc'])), 60) or 'body'}: {printable(e['msg'], 200)}"
        for e in errors[:3]
    ]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more
