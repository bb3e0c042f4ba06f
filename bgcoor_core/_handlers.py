"""Adapting user code to the one handler interface: ``run(payload)``.

A plain function is wrapped in :class:`FunctionHandler`, which unpacks the payload
``{"args": [...], "kwargs": {...}}``, checks it against the function's signature and
validates annotated arguments with pydantic, so a JSON string arrives as the
``datetime`` (or model, or enum) the function asked for.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from pydantic import TypeAdapter, ValidationError

from ._errors import PayloadError


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
        self._adapters = _argument_adapters(fn, self.signature)
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
        if not self._adapters and not args and not kwargs:
            return args, kwargs
        bound = self.bind(args, kwargs)
        for key, value in bound.arguments.items():
            adapter = self._adapters.get(key)
            if adapter is not None:
                bound.arguments[key] = self._validate(adapter, key, value, python=False)
        return bound.args, bound.kwargs

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> inspect.BoundArguments:
        try:
            return self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise PayloadError(f"task {self.name!r}: {exc}") from None

    def encode_arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Check arguments in the caller and turn them into a JSON payload."""
        bound = self.bind(args, kwargs)
        for key, value in bound.arguments.items():
            adapter = self._adapters.get(key)
            if adapter is not None:
                checked = self._validate(adapter, key, value, python=True)
                bound.arguments[key] = adapter.dump_python(checked, mode="json")
        return {"args": list(bound.args), "kwargs": dict(bound.kwargs)}

    def _validate(self, adapter: TypeAdapter[Any], key: str, value: Any, *, python: bool) -> Any:
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            problem = exc.errors(include_url=False)[0]["msg"]
            raise PayloadError(
                f"task {self.name!r}: argument {key!r} = {value!r:.60}: {problem}"
            ) from None


def split_payload(name: str, payload: Any) -> tuple[list[Any], dict[str, Any]]:
    if payload is None:
        return [], {}
    if not isinstance(payload, dict) or not set(payload) <= {"args", "kwargs"}:
        raise PayloadError(
            f"task {name!r}: payload must be {{'args': [...], 'kwargs': {{...}}}}, "
            f"got {type(payload).__name__}"
        )
    args = payload.get("args", [])
    kwargs = payload.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise PayloadError(f"task {name!r}: payload 'args' must be a list and 'kwargs' a dict")
    return args, kwargs


def _argument_adapters(
    fn: Callable[..., Any], signature: inspect.Signature
) -> dict[str, TypeAdapter[Any]]:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: skip validation, do not fail
        return {}
    return {
        p.name: TypeAdapter(hints[p.name])
        for p in signature.parameters.values()
        if p.kind in _BINDABLE and p.name in hints and hints[p.name] is not Any
    }


def is_async_handler(handler: Handler) -> bool:
    if isinstance(handler, FunctionHandler):
        return handler.is_async
    return inspect.iscoroutinefunction(handler.run)
