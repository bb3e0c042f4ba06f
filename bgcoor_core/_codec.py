"""Turning tasks into message bodies and back.

A body is ``<content type> b"\\n" <serialised task>``. The content type names the
serializer; a body whose content type is not accepted is refused *before* it is parsed,
which is what keeps a pickle payload from ever being unpickled unless pickle was
explicitly enabled.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from ._errors import DecodeError, PayloadError, PayloadTooLargeError
from ._handlers import SECRET_MASK, refuse_secrets_in_payload
from ._task import MESSAGE_FORMAT, Task
from ._text import printable as printable  # re-exported: backends import it from here

JSON = "application/json"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_MASK = SECRET_MASK.encode()
DEFAULT_MAX_RESULT_BYTES = 10 * 1024 * 1024


@runtime_checkable
class Serializer(Protocol):
    """Turns plain data (dicts, lists, strings, numbers) into bytes and back."""

    content_type: str

    def dumps(self, data: Any) -> bytes: ...

    def loads(self, raw: bytes) -> Any: ...


class JsonSerializer:
    content_type = JSON

    def dumps(self, data: Any) -> bytes:
        return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, raw: bytes) -> Any:
        return json.loads(raw)


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
        accept: Iterable[str] = (JSON,),
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        accept = frozenset(accept) | {content_type}
        missing = sorted(ct for ct in accept if ct not in serializers)
        if missing:
            raise PayloadError(
                f"no serializer for content type(s) {', '.join(missing)}; "
                f"available: {', '.join(sorted(serializers))}"
            )
        self.content_type = content_type
        self.max_payload_bytes = max_payload_bytes
        self._serializer = serializers[content_type]
        self._accepted = {ct: serializers[ct] for ct in accept}
        self._prefix = content_type.encode() + b"\n"

    def encode(self, task: Task) -> bytes:
        """Serialise ``task``; raises :class:`PayloadError` naming what cannot be encoded."""
        try:
            if self.content_type == JSON:
                body = task.model_dump_json().encode()
            else:
                body = self._serializer.dumps(task.model_dump(mode="json"))
        except (TypeError, ValueError) as exc:
            raise PayloadError(f"task {task.name!r} cannot be serialised: {exc}") from exc
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
                f"refused message with content type {ct[:60]!r}: accepted are "
                f"{', '.join(sorted(self._accepted))}"
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
