"""Adapting user code to the one handler interface: ``run(payload)``.

A plain function is wrapped in :class:`FunctionHandler`, which unpacks the payload
``{"args": [...], "kwargs": {...}}``, checks it against the function's signature and
validates annotated arguments with pydantic, so a JSON string arrives as the
``datetime`` (or model, or enum) the function asked for.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import inspect
import math
import pathlib
import typing
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import (
    BaseModel,
    ConfigDict,
    PydanticSchemaGenerationError,
    Secret,
    SecretBytes,
    SecretStr,
    TypeAdapter,
    ValidationError,
)

from ._errors import PayloadError, TaskRegistrationError
from ._text import printable


@runtime_checkable
class Handler(Protocol):
    """Anything with a ``run(payload)`` method, sync or async."""

    def run(self, payload: Any) -> Any: ...


_BINDABLE = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.KEYWORD_ONLY,
)


class FunctionHandler:
    """Calls a function with the arguments carried in a task payload."""

    def __init__(self, fn: Callable[..., Any], name: str) -> None:
        self.fn = fn
        self.name = name
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        types = _argument_types(fn, self.signature)
        self._adapters = {
            key: adapter_for(tp, f"task {name!r}: parameter {key!r}") for key, tp in types.items()
        }
        #: Arguments whose declared type may hold a pydantic secret: checked at enqueue.
        self._secret_params = frozenset(name for name, tp in types.items() if may_hold_secret(tp))
        self._positional, self._fewest = _positional(self.signature)
        #: The validators of the positional parameters, in order (``None``: unannotated).
        self._positional_validators = tuple(
            None if key not in self._adapters else self._adapters[key].validator.validate_python
            for key in self._positional
        )
        if self.is_async:
            self.run = self._run_async  # type: ignore[method-assign]

    def run(self, payload: Any) -> Any:
        args, kwargs = self.arguments(payload)
        return self.fn(*args, **kwargs)

    async def _run_async(self, payload: Any) -> Any:
        args, kwargs = self.arguments(payload)
        return await self.fn(*args, **kwargs)

    def arguments(self, payload: Any) -> tuple[Sequence[Any], Mapping[str, Any]]:
        """Unpack and validate ``payload``; :class:`PayloadError` says what is wrong."""
        args, kwargs = split_payload(self.name, payload)
        if not kwargs and self._fewest <= len(args) <= len(self._positional):
            # Positional arguments the function takes, none missing: bound in place.
            if not self._adapters:
                return args, kwargs
            try:
                return [
                    value if validate is None else validate(value)
                    for validate, value in zip(self._positional_validators, args, strict=False)
                ], kwargs
            except ValidationError:
                pass  # validated again one by one below, to say which argument is wrong
        bound = self.bind(args, kwargs)
        for key, value in bound.arguments.items():
            adapter = self._adapters.get(key)
            if adapter is not None:
                bound.arguments[key] = self._validate(adapter, key, value)
        return bound.args, bound.kwargs

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        try:
            return self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise PayloadError(f"task {self.name!r}: {self._unknown(kwargs) or exc}") from None

    def bind_partial(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> inspect.BoundArguments:
        try:
            return self.signature.bind_partial(*args, **kwargs)
        except TypeError as exc:
            raise PayloadError(f"task {self.name!r}: {self._unknown(kwargs) or exc}") from None

    def _unknown(self, kwargs: Mapping[str, Any]) -> str:
        """Name keyword arguments the function has no parameter for (``crunch(m=1)``
        would otherwise only say that ``n`` is missing)."""
        params = self.signature.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return ""
        unknown = sorted(k for k in kwargs if k not in params)
        if not unknown:
            return ""
        names = ", ".join(repr(k) for k in unknown)
        noun = "argument" if len(unknown) == 1 else "arguments"
        return f"unexpected keyword {noun} {names}; its parameters are {', '.join(params)}"

    def encode_arguments(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], *, partial: bool = False
    ) -> dict[str, Any]:
        """Check arguments in the caller and make the payload: annotated ones validated
        (``"5"`` for an ``int`` becomes ``5``), kept as Python values for the codec to
        carry (see :mod:`bgcoor_core._values`). ``partial``: some may be missing (a
        workflow's signature, whose parents' results come first)."""
        if not partial and not kwargs and self._fewest <= len(args) <= len(self._positional):
            checked_args = list(args)
            for index, key in enumerate(self._positional[: len(args)]):
                adapter = self._adapters.get(key)
                if adapter is not None:
                    checked_args[index] = self._checked(adapter, key, args[index])
            return {"args": checked_args, "kwargs": {}}
        bound = self.bind_partial(args, kwargs) if partial else self.bind(args, kwargs)
        for key, value in bound.arguments.items():
            adapter = self._adapters.get(key)
            if adapter is not None:
                bound.arguments[key] = self._checked(adapter, key, value)
        return {"args": list(bound.args), "kwargs": dict(bound.kwargs)}

    def _checked(self, adapter: TypeAdapter[Any], key: str, value: Any) -> Any:
        checked = self._validate(adapter, key, value)
        if key in self._secret_params:
            refuse_secrets(self.name, checked, f"argument {key!r}")
        return checked

    def _validate(self, adapter: TypeAdapter[Any], key: str, value: Any) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            # What is wrong and where, never the value: arguments carry PINs and tokens,
            # and this message ends up in worker logs and dead-letter reasons.
            raise PayloadError(f"task {self.name!r}: argument {key!r}{_problem(exc)}") from None


def _positional(signature: inspect.Signature) -> tuple[tuple[str, ...], float]:
    """The names of the parameters positional arguments fill, in order, and how few
    positional arguments leave none missing (infinite when a keyword-only parameter has
    no default: such a call always goes through ``Signature.bind``)."""
    names: list[str] = []
    fewest: float = 0
    for param in signature.parameters.values():
        if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD):
            names.append(param.name)
            if param.default is param.empty:
                fewest = len(names)
        elif param.kind is param.KEYWORD_ONLY and param.default is param.empty:
            fewest = math.inf
        elif param.kind is param.VAR_POSITIONAL:
            break  # more arguments than names: Signature.bind
    return tuple(names), fewest


def _problem(exc: ValidationError) -> str:
    """``: items.2: Input should be greater than 0 (+1 more)`` (no input values)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    where = printable(".".join(map(str, first["loc"])), 80)
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{' at ' + where if where else ''}: {printable(first['msg'], 200)}{more}"


# -- pydantic secrets ----------------------------------------------------------------------

SECRET_TYPES = (Secret, SecretStr, SecretBytes)
#: What a pydantic secret turns into when serialised: the task would receive this.
SECRET_MASK = "**********"
_MAX_DEPTH = 32


def may_hold_secret(tp: Any) -> bool:
    """Whether values of type ``tp`` may contain a pydantic secret (decided once, at
    registration, so arguments of ordinary types are never searched)."""
    return _type_may_hold_secret(tp, set())


def _type_may_hold_secret(tp: Any, seen: set[int]) -> bool:
    if id(tp) in seen:
        return False
    seen.add(id(tp))
    if tp is Any or tp is object or isinstance(tp, str | typing.ForwardRef | typing.TypeVar):
        return True  # whatever is passed is kept as is, secrets included
    origin = typing.get_origin(tp)
    if origin is not None:
        if origin is typing.Annotated:
            return _type_may_hold_secret(typing.get_args(tp)[0], seen)
        return any(_type_may_hold_secret(t, seen) for t in (origin, *typing.get_args(tp)))
    if not isinstance(tp, type):
        return False  # a literal value, None, an Ellipsis in tuple[int, ...]
    if issubclass(tp, SECRET_TYPES):
        return True
    if issubclass(tp, _LEAF_TYPES):
        return False
    members = _member_types(tp)
    # Anything else (a bare dict or list, a class of its own) may hold anything.
    return members is None or any(_type_may_hold_secret(t, seen) for t in members)


#: Types whose values hold no other value, so no secret.
_LEAF_TYPES = (
    str,
    bytes,
    bytearray,
    int,
    float,
    complex,
    type(None),
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    uuid.UUID,
    enum.Enum,
    pathlib.PurePath,
)


def _member_types(tp: type) -> list[Any] | None:
    """The declared types of a model's, dataclass's or TypedDict's fields; ``None`` for
    any other type."""
    if issubclass(tp, BaseModel):
        return [field.annotation for field in tp.model_fields.values()]
    if dataclasses.is_dataclass(tp) or typing.is_typeddict(tp):
        try:
            return list(typing.get_type_hints(tp).values())
        except Exception:  # unresolvable annotations: assume the worst
            return [Any]
    return None


def refuse_secrets(task: str, value: Any, where: str) -> None:
    """Raise :class:`PayloadError` if ``value`` holds a pydantic secret anywhere.

    A secret serialises as ``"**********"``: the task would run with the mask instead of
    the secret, silently. Refused at enqueue, naming where it is, never what it is.
    """
    found = _find_secret(value, "", 0)
    if found is None:
        return
    path, kind = found
    at = f" at {path.removeprefix('.')}" if path else ""
    raise PayloadError(
        f"task {task!r}: {where}{at} is a pydantic {kind}, which is serialised as "
        f"{SECRET_MASK!r}: the task would receive the mask, not the secret. Pass a reference "
        "the worker can resolve (a secret store key, an environment variable name) instead"
    )


def refuse_secrets_in_payload(task: str, payload: Any) -> None:
    """:func:`refuse_secrets` for a whole payload, naming the argument that holds one."""
    if isinstance(payload, dict) and set(payload) <= {"args", "kwargs"}:
        for index, arg in enumerate(payload.get("args") or ()):
            refuse_secrets(task, arg, f"positional argument {index}")
        kwargs = payload.get("kwargs")
        for name, arg in kwargs.items() if isinstance(kwargs, dict) else ():
            refuse_secrets(task, arg, f"argument {printable(str(name), 60)!r}")
    refuse_secrets(task, payload, "the payload")


def _find_secret(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    if isinstance(value, SECRET_TYPES):
        return path, type(value).__name__
    if depth > _MAX_DEPTH or isinstance(value, str | bytes | int | float | bool | None):
        return None
    for key, item in _members(value):
        found = _find_secret(item, f"{path}{key}", depth + 1)
        if found is not None:
            return found
    return None


def _members(value: Any) -> list[tuple[str, Any]]:
    """``(path step, item)`` for a container's items or an object's fields. Dict keys are
    never shown: they are data too."""
    if isinstance(value, dict):
        return [(f"[{i}]", item) for i, item in enumerate(value.values())]
    if isinstance(value, list | tuple | set | frozenset):
        return [(f"[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, BaseModel):
        return [(f".{name}", getattr(value, name, None)) for name in type(value).model_fields]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [(f".{f.name}", getattr(value, f.name, None)) for f in dataclasses.fields(value)]
    return []


_PAYLOAD_KEYS = frozenset({"args", "kwargs"})


def split_payload(name: str, payload: Any) -> tuple[list[Any], dict[str, Any]]:
    if payload is None:
        return [], {}
    if not isinstance(payload, dict) or not payload.keys() <= _PAYLOAD_KEYS:
        raise PayloadError(
            f"task {name!r}: payload must be {{'args': [...], 'kwargs': {{...}}}}, "
            f"got {type(payload).__name__}"
        )
    args = payload.get("args", [])
    kwargs = payload.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise PayloadError(f"task {name!r}: payload 'args' must be a list and 'kwargs' a dict")
    return args, kwargs


_ANY_CLASS = ConfigDict(arbitrary_types_allowed=True)


def adapter_for(tp: Any, what: str) -> TypeAdapter[Any]:
    """The validator of a declared type. A class of its own that pydantic has no schema
    for is checked with ``isinstance`` (only pickle carries its objects; other formats
    refuse them at enqueue, naming the type); a type no validator can be made for is a
    :class:`TaskRegistrationError` naming ``what`` declared it."""
    try:
        return TypeAdapter(tp)
    except PydanticSchemaGenerationError:
        pass
    try:
        return TypeAdapter(tp, config=_ANY_CLASS)
    except Exception as exc:
        raise TaskRegistrationError(
            f"{what}: cannot validate values of type {tp!r}: {str(exc).splitlines()[0]}"
        ) from None


def _argument_types(fn: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """The declared types of the arguments to validate (annotated, and not ``Any``)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)  # keep Field(...) constraints
    except Exception:  # unresolvable forward references: skip validation, do not fail
        return {}
    return {
        p.name: hints[p.name]
        for p in signature.parameters.values()
        if p.kind in _BINDABLE and p.name in hints and hints[p.name] is not Any
    }


def is_async_handler(handler: Handler) -> bool:
    if isinstance(handler, FunctionHandler):
        return handler.is_async
    return inspect.iscoroutinefunction(handler.run)
