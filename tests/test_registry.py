"""TaskRegistry: functions and handler objects by name, from any thread."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import pytest

from bgcoor_core import (
    InvalidNameError,
    PayloadError,
    TaskOptions,
    TaskRegistrationError,
    TaskRegistry,
    UnknownTaskError,
)
from bgcoor_core._handlers import FunctionHandler


def add(x: int, y: int) -> int:
    return x + y


async def add_async(x: int, y: int) -> int:
    return x + y


class SyncHandler:
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def run(self, payload: Any) -> Any:
        self.seen.append(payload)
        return {"echo": payload}


class AsyncHandler:
    async def run(self, payload: Any) -> Any:
        return {"async echo": payload}


def test_register_a_sync_function(registry: TaskRegistry) -> None:
    entry = registry.register("add", add)
    assert entry.name == "add"
    assert entry.is_async is False
    assert isinstance(entry.handler, FunctionHandler)
    assert entry.handler.run({"args": [1, 2], "kwargs": {}}) == 3
    assert entry.handler.run({"args": [1], "kwargs": {"y": 5}}) == 6
    assert registry.get("add") is entry


async def test_register_an_async_function(registry: TaskRegistry) -> None:
    entry = registry.register("add_async", add_async)
    assert entry.is_async is True
    assert await entry.handler.run({"args": [2, 3]}) == 5


def test_register_a_sync_handler_object(registry: TaskRegistry) -> None:
    handler = SyncHandler()
    entry = registry.register("echo", handler)
    assert entry.handler is handler  # used as is, not wrapped
    assert entry.is_async is False
    assert entry.handler.run({"any": "shape"}) == {"echo": {"any": "shape"}}
    assert handler.seen == [{"any": "shape"}]


async def test_register_an_async_handler_object(registry: TaskRegistry) -> None:
    entry = registry.register("echo", AsyncHandler())
    assert entry.is_async is True
    assert await entry.handler.run([1, 2]) == {"async echo": [1, 2]}


def test_options_are_kept(registry: TaskRegistry) -> None:
    options = TaskOptions(max_retries=7, timeout=1.5, queue="slow", priority=3)
    assert registry.register("add", add, options).options == options
    assert registry.register("other", add).options == TaskOptions()


def test_registering_a_name_twice_is_an_error(registry: TaskRegistry) -> None:
    first = registry.register("add", add)
    with pytest.raises(TaskRegistrationError, match="'add' is already registered"):
        registry.register("add", add_async)
    with pytest.raises(TaskRegistrationError, match="'add' is already registered"):
        registry.register("add", SyncHandler())
    assert registry.get("add") is first
    assert len(registry) == 1


def test_unknown_name_is_an_error_naming_it(registry: TaskRegistry) -> None:
    registry.register("known.one", add)
    with pytest.raises(UnknownTaskError, match=r"unknown task 'no\.such\.task'") as info:
        registry.get("no.such.task")
    assert info.value.name == "no.such.task"
    assert "known.one" in str(info.value)  # lists what is registered
    assert isinstance(info.value, LookupError)


def test_unknown_name_in_an_empty_registry(registry: TaskRegistry) -> None:
    with pytest.raises(UnknownTaskError, match="unknown task 'x'"):
        registry.get("x")


def test_membership_length_and_names(registry: TaskRegistry) -> None:
    registry.register("b", add)
    registry.register("a", SyncHandler())
    assert "a" in registry
    assert "c" not in registry
    assert len(registry) == 2
    assert registry.names() == ["a", "b"]


@pytest.mark.parametrize("name", ["", "has space", "1abc", "x/y"])
def test_invalid_task_names_are_refused(registry: TaskRegistry, name: str) -> None:
    with pytest.raises(InvalidNameError):
        registry.register(name, add)
    assert len(registry) == 0


def test_invalid_queue_option_is_refused(registry: TaskRegistry) -> None:
    with pytest.raises(InvalidNameError, match="invalid queue name"):
        registry.register("add", add, TaskOptions(queue="no spaces allowed"))
    assert "add" not in registry


def test_a_non_callable_without_run_is_refused(registry: TaskRegistry) -> None:
    with pytest.raises(TaskRegistrationError, match="callable or have a run"):
        registry.register("bad", 42)  # type: ignore[arg-type]


def test_function_payload_is_validated_against_the_signature(registry: TaskRegistry) -> None:
    handler = registry.register("add", add).handler
    with pytest.raises(PayloadError, match="missing a required argument"):
        handler.run({"args": [1]})
    with pytest.raises(PayloadError, match="too many positional arguments"):
        handler.run({"args": [1, 2, 3]})
    with pytest.raises(PayloadError, match="argument 'x'"):
        handler.run({"args": ["not a number", 2]})
    with pytest.raises(PayloadError, match="payload must be"):
        handler.run("just a string")
    with pytest.raises(PayloadError, match="'args' must be a list"):
        handler.run({"args": {"x": 1}})


def test_positional_calls_bind_as_signature_bind_would(registry: TaskRegistry) -> None:
    """Positional arguments are bound without ``Signature.bind`` (its cost per task): the
    same defaults, the same refusals, the argument named when one is wrong."""

    def shaped(a: int, b: int = 2, *rest: int, c: int = 3) -> list[int]:
        return [a, b, *rest, c]

    def needs_keyword(a: int, *, k: int) -> int:
        return a + k

    handler = registry.register("shaped", shaped).handler
    assert handler.run({"args": ["1"]}) == [1, 2, 3]  # validated: "1" becomes 1
    assert handler.run({"args": [1, 5]}) == [1, 5, 3]
    assert handler.run({"args": [1, 5, 7, 8]}) == [1, 5, 7, 8, 3]  # *rest: bound by bind
    assert handler.run({"args": [], "kwargs": {"a": 4, "c": 9}}) == [4, 2, 9]
    with pytest.raises(PayloadError, match="missing a required argument: 'a'"):
        handler.run({"args": []})
    with pytest.raises(PayloadError, match="argument 'b'"):
        handler.run({"args": [1, "two"]})
    keyword = registry.register("needs_keyword", needs_keyword).handler
    with pytest.raises(PayloadError, match="missing a required argument: 'k'"):
        keyword.run({"args": [1]})
    assert keyword.run({"args": [1], "kwargs": {"k": 2}}) == 3
    fn = registry.get("shaped").handler
    assert isinstance(fn, FunctionHandler)
    assert fn.encode_arguments([1, "5"], {}) == {"args": [1, 5], "kwargs": {}}
    with pytest.raises(PayloadError, match="argument 'a'"):
        fn.encode_arguments(["x"], {})


def test_annotated_arguments_arrive_as_their_type(registry: TaskRegistry) -> None:
    def when(at: datetime) -> str:
        assert isinstance(at, datetime)
        return at.isoformat()

    handler = registry.register("when", when).handler
    assert handler.run({"args": ["2024-05-06T07:08:09+00:00"]}) == "2024-05-06T07:08:09+00:00"


def test_many_threads_register_distinct_names_concurrently(registry: TaskRegistry) -> None:
    threads_n, per_thread = 16, 200
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def register_many(t: int) -> None:
        start.wait()
        try:
            for i in range(per_thread):
                handler: Any = add if i % 2 else SyncHandler()
                registry.register(f"t{t}.task{i}", handler)
                registry.get(f"t{t}.task{i}")  # readable at once, from any thread
        except BaseException as exc:  # surfaced below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=register_many, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    expected = {f"t{t}.task{i}" for t in range(threads_n) for i in range(per_thread)}
    assert set(registry.names()) == expected
    assert len(registry) == threads_n * per_thread
    for name in expected:
        assert registry.get(name).name == name


def test_concurrent_registrations_of_one_name_admit_exactly_one(
    registry: TaskRegistry,
) -> None:
    threads_n = 16
    start = threading.Barrier(threads_n)
    handlers = [SyncHandler() for _ in range(threads_n)]
    won: list[int] = []
    refused: list[int] = []

    def race(n: int) -> None:
        start.wait()
        try:
            registry.register("contested", handlers[n])
        except TaskRegistrationError:
            refused.append(n)
        else:
            won.append(n)

    threads = [threading.Thread(target=race, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1
    assert len(refused) == threads_n - 1
    assert registry.get("contested").handler is handlers[won[0]]
