"""Turning tasks into message bodies and back.

A body is ``<content type> b"\\n" <serialised task>``. The content type names the
serializer; a body whose content type is not accepted is refused *before* it is parsed,
which is what keeps a pickle payload from ever being unpickled unless pickle was
explicitly enabled.

With payload codecs configured (``BGCOOR_PAYLOAD_CODECS``), a task's payload and result are
sealed: serialised, passed through the codecs (compressed, encrypted) and carried as an
:class:`~bgcoor_core.kit.Opaque` in messages and records alike, opened only by
:meth:`Codec.open` (see :mod:`bgcoor_core._payload_codecs`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import ValidationError
from pydantic_core import from_json, to_json

from ._errors import DecodeError, PayloadError, PayloadTooLargeError
from ._handlers import SECRET_MASK, refuse_secrets_in_payload
from ._task import MESSAGE_FORMAT, Task
from ._text import printable as printable  # re-exported: backends import it from here
from ._values import PACKED_SLOT, Opaque, UnrepresentableError, pack, unpack

if TYPE_CHECKING:
    from ._payload_codecs import Openers, PayloadCodec

JSON = "application/json"
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
_MASK = SECRET_MASK.encode()
DEFAULT_MAX_RESULT_BYTES = 10 * 1024 * 1024
#: Why a value that payload codecs would shrink is still measured before them.
_BEFORE = "; it bounds a value before its payload codecs too: what a reader expands it to"


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
    ``ValueError`` naming what cannot be carried. ``dumps`` and ``loads`` also serve one
    value alone (a payload or a result, as they are), when it is sealed: into an
    :class:`~bgcoor_core.kit.Opaque`, for payload codecs or for a value only this format
    carries.

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


#: The payload of a message sent with a claim check: the worker reads the real one from
#: the task's record (``BGCOOR_CLAIM_CHECK``).
CLAIMED = Opaque("application/x-bgcoor-claim-check", b"")


def fields_of(task: Task) -> dict[str, Any]:
    """The task's fields as they are (no copy of its values): what a serializer dumps."""
    data = dict(task.__dict__)
    data.pop(PACKED_SLOT, None)
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
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
        claim_check_bytes: int | None = None,
        payload_codecs: Sequence[PayloadCodec] = (),
        openers: Openers | None = None,
    ) -> None:
        """``payload_codecs``: what new payloads and results pass through, in order;
        ``openers``: the codecs sealed values are opened with (default: those);
        ``claim_check_bytes``: with a claim check, the largest task accepted (its message
        then carries :data:`CLAIMED` and the worker reads the payload from its record)."""
        content_type = resolve_content_type(serializers, content_type)
        if accept is None:  # every format installed but those whose loading runs code
            accept = [ct for ct, s in serializers.items() if not getattr(s, "trusted_only", False)]
        accepted = frozenset(resolve_content_type(serializers, ct) for ct in accept)
        self.content_type = content_type
        self.max_payload_bytes = max_payload_bytes
        self.max_result_bytes = max_result_bytes
        self.claim_check_bytes = claim_check_bytes
        #: The largest payload a value may be, serialised: what sealing and opening bound.
        self._value_limit = max(max_payload_bytes, claim_check_bytes or 0)
        self._serializer = serializers[content_type]
        self._objects = bool(getattr(self._serializer, "carries_objects", False))
        self._chain = tuple(payload_codecs)
        if openers is None:
            from ._payload_codecs import Openers

            openers = Openers({}, None, {c.name: c for c in self._chain})
        self._openers = openers
        #: Whether values are ever sealed: the one check the hot path makes.
        self._seals = self._objects or bool(self._chain)
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

    @property
    def payload_codecs(self) -> tuple[PayloadCodec, ...]:
        """What new payloads and results pass through, in order."""
        return self._chain

    def encode(self, task: Task) -> bytes:
        """Serialise ``task``; raises :class:`PayloadError` naming what cannot be encoded."""
        return self.encode_with_record(task)[0]

    def encode_with_record(self, task: Task) -> tuple[bytes, str | None]:
        """:meth:`encode`, and the task's record JSON when the body holds it as it is
        (``None`` in another format or with a claim check): stored beside the message
        without dumping the task again."""
        record = None
        try:
            if self._seals:
                task.payload = self._sealed_payload(task)
            if self.content_type == JSON:
                record = task.model_dump_json()
                body = record.encode()
            else:
                body = self._serializer.dumps(fields_of(task))
        except PayloadError:
            raise
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
            return self._claimed(task, len(data)), None
        return data, record

    def _claimed(self, task: Task, size: int) -> bytes:
        """The message of a task too large for one: with a claim check, the task with
        :data:`CLAIMED` for its payload (the record, written from ``task``, keeps it)."""
        limit = self.claim_check_bytes
        if limit is None or size > limit or task.payload is CLAIMED:
            setting = "max_payload_bytes" if limit is None else "claim_check_max_bytes"
            if task.payload is CLAIMED:  # the rest of the task is too large alone
                limit, setting = None, "max_payload_bytes, without its payload"
            raise PayloadTooLargeError(
                f"task {task.name!r} is {size} bytes encoded, above the limit of "
                f"{limit or self.max_payload_bytes} bytes ({setting})"
            )
        return self.encode(task.model_copy(update={"payload": CLAIMED}))

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

    def _sealed_payload(self, task: Task) -> Any:
        try:
            return self.seal(task.payload, name=task.name)
        except PayloadTooLargeError as exc:
            raise PayloadTooLargeError(
                f"task {task.name!r} has a payload of {exc} (max_payload_bytes{_BEFORE})"
            ) from None

    def seal(self, value: Any, limit: int | None = None, *, name: str | None = None) -> Any:
        """``value`` as messages and records carry it: with payload codecs, serialised,
        passed through them and sealed into an :class:`Opaque` (left as it is when none
        applied, a value below the compression threshold); without, a value no tag
        describes sealed whole when this codec's format carries any object (pickle).

        A value already sealed is left as it is. ``limit`` (default ``max_payload_bytes``)
        bounds the value serialised, before the codecs: what :meth:`open` expands a value
        to at most. Raises :class:`PayloadTooLargeError` past it; ``name``, the task's,
        lets a masked secret be refused by name (as :meth:`encode` does)."""
        if value is None or not self._seals or type(value) is Opaque:
            return value
        if not self._chain:
            try:
                pack(value)
            except UnrepresentableError:
                return Opaque(self.content_type, self._serializer.dumps(value))
            return value
        data = self._serializer.dumps(value)
        if name is not None and _MASK in data:
            refuse_secrets_in_payload(name, value)
        limit = self._value_limit if limit is None else limit
        if len(data) > limit:
            raise PayloadTooLargeError(f"{len(data)} bytes serialised, above the limit of {limit}")
        data, specs = self._through_chain(data)
        if specs:
            return Opaque(self.content_type, data, specs)
        if self._objects:  # left unsealed only if records (JSON) can hold it as it is
            try:
                pack(value)
            except UnrepresentableError:
                return Opaque(self.content_type, data)
        return value

    def _through_chain(self, data: bytes) -> tuple[bytes, str]:
        """``data`` through the payload codecs, and the specs of those that applied."""
        specs = []
        for codec in self._chain:
            data, spec = codec.encode(data)
            if spec:
                specs.append(spec)
        return data, ",".join(specs)

    def open(self, value: Any, limit: int | None = None) -> Any:
        """A sealed value's content, loaded only if its content type is accepted, after
        its payload codecs are reversed (newest first; each at most ``limit`` bytes, by
        default ``max_payload_bytes``); any other value as it is. Raises
        :class:`DecodeError` saying why a value is refused: its type, a key this process
        does not hold, tampering, a decompression bomb."""
        if type(value) is not Opaque:
            return value
        serializer = self._accepted.get(value.content_type)
        if serializer is None:
            raise DecodeError(
                f"refused value of content type {printable(value.content_type, 60)!r}: not "
                f"accepted (BGCOOR_ACCEPT_CONTENT: {', '.join(sorted(self._accepted))})"
            )
        data = value.data
        if value.codecs:
            data = self._unsealed(value, self._value_limit if limit is None else limit)
        try:
            return serializer.loads(data)
        except Exception as exc:
            problem = printable(f"{type(exc).__name__}: {exc}", 300)
            raise DecodeError(f"malformed {value.content_type} value: {problem}") from None

    def open_result(self, value: Any) -> Any:
        """:meth:`open` for a task's result (bounded by ``max_result_bytes``)."""
        if type(value) is not Opaque:
            return value
        return self.open(value, self.max_result_bytes)

    def _unsealed(self, value: Opaque, limit: int) -> bytes:
        data = value.data
        try:
            for spec in reversed(value.codecs.split(",")):
                data = self._openers.get(spec.partition(":")[0]).decode(data, spec, limit)
        except Exception as exc:  # a codec's refusal (ValueError), or its own failure
            problem = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise DecodeError(
                f"refused value sealed with {printable(value.codecs, 80)}: "
                f"{printable(problem, 300)}"
            ) from None
        return data

    def check_result(self, name: str, result: Any, limit: int) -> Any:
        """A handler's result as its record will hold it (sealed if need be), refused with
        :class:`PayloadError` when no format here carries it or when it is larger than
        ``limit`` bytes in the record."""
        if result is None:
            return None
        try:
            result = self.seal(result, limit)
            size = len(to_json(pack(result)))
        except PayloadTooLargeError as exc:
            raise PayloadTooLargeError(
                f"task {name!r} returned a result of {exc} (BGCOOR_MAX_RESULT_BYTES{_BEFORE})"
            ) from None
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
