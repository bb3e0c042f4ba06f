"""Failures as data (issue 15): a failed task's record keeps its exception's type, module,
message, traceback and chain of causes, readable without the exception's class, bounded
whatever the exception; ``result()`` raises a ``TaskFailedError`` that is also the original
class when that class is found in this process (never importing anything)."""

from __future__ import annotations

import pickle
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import isolation_tasks as iso
import pytest

from bgcoor_core import (
    Failure,
    FailureCause,
    Retry,
    Task,
    TaskFailedError,
    TaskManager,
    TaskStatus,
    build_plugin_host,
)
from bgcoor_core._failures import (
    CAUSE_MESSAGE_LIMIT,
    MAX_CAUSES,
    MESSAGE_LIMIT,
    TRACEBACK_LIMIT,
    failed_error,
)
from bgcoor_core._workflow_inputs import failure as failure_marker

FAST: dict[str, Any] = {"retry_backoff": 0.0, "retry_backoff_max": 0.0, "poll_seconds": 0.1}


_ACCOUNTS: dict[str, int] = {}


class Refused(Exception):
    """Needs two arguments to be built, so neither pickle nor a plain call rebuilds it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code


def refuse() -> None:
    """Raise a chain: Refused, caused by ConnectionError, raised while handling KeyError."""
    try:
        try:
            _ACCOUNTS["account"]
        except KeyError:
            raise ConnectionError("upstream down")  # noqa: B904 - an implicit context
    except ConnectionError as exc:
        raise Refused(503, "try later") from exc


def _caught(fn: Any, *args: Any) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError(f"{fn} did not raise")


def _record(failure: Failure, status: TaskStatus = TaskStatus.FAILED) -> Task:
    return Task.new(
        "t",
        status=status,
        error=f"{failure.type}: {failure.message}",
        traceback=failure.traceback,
        failure=failure,
    )


def _raised(record: Task) -> TaskFailedError:
    error = failed_error(record)
    assert str(error) == f"task {record.id} ended {record.status}: {record.error}"
    assert (error.task_id, error.status, error.error) == (record.id, record.status, record.error)
    assert error.traceback == record.traceback
    assert error.failure == record.failure
    return error


def _chain_of(failure: Failure) -> list[tuple[str, str, bool]]:
    return [(c.type, c.message, c.implicit) for c in failure.causes]


# -- describing an exception -------------------------------------------------------------


def test_a_failure_keeps_type_module_message_traceback_and_its_causes() -> None:
    failure = Failure.of(_caught(refuse))
    assert (failure.type, failure.module, failure.message) == (
        "Refused",
        __name__,
        "503 try later",
    )
    assert failure.qualified == f"{__name__}.Refused"
    assert _chain_of(failure) == [
        ("ConnectionError", "upstream down", False),  # raise ... from exc
        ("KeyError", "'account'", True),  # being handled when it was raised
    ]
    assert [c.module for c in failure.causes] == ["builtins", "builtins"]
    assert failure.causes[1].qualified == "KeyError"
    assert not failure.causes_clipped
    assert failure.traceback.startswith("Traceback (most recent call last):")
    assert "in refuse" in failure.traceback
    assert failure.traceback.rstrip().endswith("Refused: 503 try later")


def test_a_suppressed_context_is_not_a_cause() -> None:
    def hide() -> None:
        try:
            raise KeyError("secret key")
        except KeyError:
            raise ValueError("clean") from None

    failure = Failure.of(_caught(hide))
    assert failure.causes == []
    assert "secret key" not in failure.model_dump_json()


def test_nested_classes_are_named_by_qualname() -> None:
    class Outer:
        class Inner(Exception):
            pass

    failure = Failure.of(Outer.Inner("x"))
    assert failure.type.endswith("Outer.Inner")
    assert failure.module == __name__


def test_an_exception_whose_str_raises_is_still_described() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    failure = Failure.of(Broken())
    assert failure.message == "<str() of the exception failed>"
    assert failure.type.endswith("Broken")


def test_only_str_of_the_exception_is_kept_not_the_repr_of_its_args() -> None:
    class Quiet(Exception):
        def __str__(self) -> str:
            return "card declined"

    failure = Failure.of(Quiet("card 4111-1111-1111-1111"))
    assert failure.message == "card declined"
    assert "4111" not in failure.model_dump_json(exclude={"traceback"})


# -- bounds ------------------------------------------------------------------------------


def test_a_megabyte_message_is_clipped_with_a_note() -> None:
    failure = Failure.of(_caught(_raise_huge))
    assert failure.message.startswith("x" * MESSAGE_LIMIT)
    assert failure.message.endswith(f"... [{1_000_000 - MESSAGE_LIMIT} more characters]")
    assert len(failure.traceback) < TRACEBACK_LIMIT + 100
    assert "characters clipped] ..." in failure.traceback
    assert failure.traceback.startswith("Traceback (most recent call last):")  # its start
    assert failure.traceback.rstrip().endswith("x" * 100)  # and its end
    assert len(failure.model_dump_json()) < MESSAGE_LIMIT + TRACEBACK_LIMIT + 1000


def _raise_huge() -> None:
    try:
        raise KeyError("k" * 1_000_000)
    except KeyError:
        raise ValueError("x" * 1_000_000) from None


def test_each_cause_message_is_clipped() -> None:
    exc = ValueError("top")
    exc.__cause__ = KeyError("c" * 100_000)
    (cause,) = Failure.of(exc).causes
    assert len(cause.message) < CAUSE_MESSAGE_LIMIT + 50
    assert cause.message.endswith("more characters]")


def test_a_cause_cycle_ends_where_it_comes_round() -> None:
    first, second = ValueError("first"), KeyError("second")
    first.__cause__, second.__cause__ = second, first
    failure = Failure.of(first)
    assert _chain_of(failure) == [("KeyError", "'second'", False)]
    assert not failure.causes_clipped
    itself = ValueError("me")
    itself.__context__ = itself
    assert Failure.of(itself).causes == []


def test_a_long_chain_keeps_its_first_links_and_says_it_was_clipped() -> None:
    top = current = ValueError("0")
    for n in range(1, 200):
        current.__cause__ = ValueError(str(n))
        current = current.__cause__
    failure = Failure.of(top)
    assert [c.message for c in failure.causes] == [str(n) for n in range(1, MAX_CAUSES + 1)]
    assert failure.causes_clipped


def test_text_utf8_cannot_carry_is_escaped() -> None:
    failure = Failure.of(ValueError("name \udcff"))
    assert failure.message == "name \\udcff"
    failure.model_dump_json()  # does not raise


async def test_a_message_with_a_lone_surrogate_still_fails_its_task(
    manager: TaskManager,
) -> None:
    @manager.task(name="fail.surrogate", max_retries=0)
    def surrogate() -> None:
        raise ValueError("file b'\udcff'")

    handle = await surrogate.enqueue()
    assert await manager.drain() == 1  # it used to raise out of the executor
    with pytest.raises(ValueError, match=r"\\udcff"):
        await handle.result(timeout=5)
    record = await manager.get(handle.id)
    assert record.status is TaskStatus.DEAD
    assert record.error == "ValueError: file b'\\udcff'"
    assert record.failure is not None
    assert record.failure.message == "file b'\\udcff'"


# -- stored and read back on every backend ------------------------------------------------


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("redis", marks=pytest.mark.server),
        pytest.param("postgresql", marks=pytest.mark.server),
    ]
)
async def any_manager(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskManager]:
    """A manager whose broker and storage are those of one backend."""
    test_url = build_plugin_host().storages.entries[request.param].test_url
    assert test_url is not None
    url = test_url(tmp_path)
    manager = TaskManager(broker_url=url, storage_url=url, **FAST)
    yield manager
    await manager.close()


async def test_a_failure_with_its_causes_is_stored_and_read_back(
    any_manager: TaskManager,
) -> None:
    task = any_manager.task(name="fail.refuse", max_retries=0)(refuse)
    handle = await task.enqueue()
    assert await any_manager.drain() == 1
    record = await any_manager.get(handle.id)
    assert record.status is TaskStatus.DEAD
    assert record.error == "Refused: 503 try later"  # as before: "Type: message"
    failure = record.failure
    assert failure is not None
    assert (failure.type, failure.module, failure.message) == ("Refused", __name__, "503 try later")
    assert _chain_of(failure) == [
        ("ConnectionError", "upstream down", False),
        ("KeyError", "'account'", True),
    ]
    assert all(isinstance(c, FailureCause) for c in failure.causes)
    assert "in refuse" in failure.traceback
    assert record.traceback is not None
    assert "in refuse" in record.traceback
    with pytest.raises(Refused) as info:
        await handle.result(timeout=5)
    assert isinstance(info.value, TaskFailedError)
    assert info.value.failure == failure


async def test_the_dead_letter_message_carries_no_failure_the_record_does(
    manager: TaskManager,
) -> None:
    task = manager.task(name="fail.refuse", max_retries=1)(refuse)
    handle = await task.enqueue()
    while (await manager.get(handle.id)).status is not TaskStatus.DEAD:
        await manager.drain()  # the retry, due at once (no backoff)
    [letter] = await manager.broker.dead_letters("default")
    assert letter.task is not None
    assert (letter.task.failure, letter.task.traceback) == (None, None)
    assert letter.task.error == "Refused: 503 try later"
    record = await manager.get(handle.id)
    assert record.failure is not None
    assert record.failure.type == "Refused"


async def test_a_retried_task_that_succeeds_has_no_failure_left(manager: TaskManager) -> None:
    attempts: list[int] = []

    @manager.task(name="fail.once", max_retries=2)
    def once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first try")
        return "done"

    handle = await once.enqueue()
    while (await manager.get(handle.id)).status is not TaskStatus.SUCCEEDED:
        await manager.drain()
    record = await manager.get(handle.id)
    assert (record.error, record.traceback, record.failure) == (None, None, None)
    assert len(attempts) == 2


async def test_drain_raise_errors_raises_the_original_class_too(manager: TaskManager) -> None:
    @manager.task(name="fail.later")
    def later() -> None:
        raise Retry("not yet", after=3600)

    handle = await later.enqueue()
    with pytest.raises(Retry) as info:
        await manager.drain(raise_errors=True)
    assert isinstance(info.value, TaskFailedError)
    assert info.value.status == TaskStatus.RETRYING
    record = await manager.get(handle.id)
    assert record.failure is not None
    assert (record.failure.type, record.failure.module) == ("Retry", "bgcoor_core._errors")


# -- process isolation --------------------------------------------------------------------


@pytest.fixture
async def memory_manager() -> AsyncIterator[TaskManager]:
    manager = TaskManager(broker_url="memory://", storage_url="memory://", **FAST)
    yield manager
    await manager.close()


async def test_a_child_process_failure_is_stored_structured(
    memory_manager: TaskManager,
) -> None:
    refusing = memory_manager.task(name="iso.refuse", isolation="process", max_retries=0)(refuse)
    handle = await refusing.enqueue()
    assert await memory_manager.drain() == 1
    record = await memory_manager.get(handle.id)
    failure = record.failure
    assert failure is not None
    # Refused cannot be unpickled in the worker, yet the child described it: its module,
    # its chain, its own traceback.
    assert (failure.type, failure.module, failure.message) == ("Refused", __name__, "503 try later")
    assert _chain_of(failure) == [
        ("ConnectionError", "upstream down", False),
        ("KeyError", "'account'", True),
    ]
    assert "in refuse" in failure.traceback
    assert "in the child process" not in failure.traceback  # the child's, not the worker's
    assert record.error == "Refused: 503 try later"
    with pytest.raises(Refused) as info:  # the class is found here: this module has it
        await handle.result(timeout=5)
    assert isinstance(info.value, TaskFailedError)


async def test_a_child_failure_whose_class_needs_keyword_arguments_re_raises(
    memory_manager: TaskManager,
) -> None:
    failing = memory_manager.task(name="iso.failing", isolation="process", max_retries=0)(
        iso.failing
    )
    handle = await failing.enqueue("unpicklable")
    await memory_manager.drain()
    with pytest.raises(iso.UnpicklableError) as info:
        await handle.result(timeout=5)
    assert isinstance(info.value, TaskFailedError)
    assert info.value.failure is not None
    assert info.value.failure.module == "isolation_tasks"
    assert info.value.error == "UnpicklableError: cannot travel"


async def test_a_child_out_of_memory_failure_names_the_child_exception(
    memory_manager: TaskManager,
) -> None:
    hog = memory_manager.task(
        name="iso.hog", isolation="process", memory_limit_mb=128, max_retries=0
    )(iso.hog)
    handle = await hog.enqueue(400)
    await memory_manager.drain()
    record = await memory_manager.get(handle.id)
    failure = record.failure
    assert failure is not None
    assert (failure.type, failure.module) == ("MemoryLimitError", "bgcoor_core._errors")
    assert failure.message.startswith("task 'iso.hog' exceeded its memory limit of 128 MB")
    assert failure.causes[0].type == "MemoryError"
    assert "in hog" in failure.traceback  # the child's traceback


# -- raising it again ---------------------------------------------------------------------


def test_an_importable_class_is_raised_as_itself_and_as_task_failed_error() -> None:
    record = _record(Failure.of(_caught(refuse)))
    error = _raised(record)
    assert isinstance(error, Refused)
    assert isinstance(error, TaskFailedError)
    with pytest.raises(Refused):
        raise error
    with pytest.raises(TaskFailedError):
        raise _raised(record)
    assert type(_raised(record)) is type(error)  # one subclass per class, made once


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (KeyError("k"), KeyError),  # its own __str__ would quote the message
        (FileNotFoundError(2, "gone", "/x"), FileNotFoundError),  # a C layout of its own
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), UnicodeDecodeError),
        (TimeoutError("slow"), TimeoutError),
    ],
    ids=["KeyError", "FileNotFoundError", "UnicodeDecodeError", "TimeoutError"],
)
def test_built_in_classes_are_raised_with_the_task_failed_error_message(
    exc: Exception, cls: type[Exception]
) -> None:
    error = _raised(_record(Failure.of(exc)))
    assert isinstance(error, cls)
    assert isinstance(error, TaskFailedError)


class NeedsNew(Exception):
    """A class whose ``__new__`` and ``__init__`` both need arguments."""

    def __new__(cls, code: int) -> NeedsNew:
        instance = super().__new__(cls, code)
        instance.code = code  # type: ignore[attr-defined]
        return instance

    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")

    def __str__(self) -> str:
        return f"needs new {self.code}"  # type: ignore[attr-defined]


def test_a_class_whose_new_and_init_need_arguments_is_built_without_them() -> None:
    record = _record(Failure.of(NeedsNew(7)))
    assert record.failure is not None
    assert record.failure.message == "needs new 7"
    error = _raised(record)
    assert isinstance(error, NeedsNew)
    assert repr(error).startswith("NeedsNew('task ")


class Picky(Exception):
    """Refuses subclasses."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("no subclasses")


class ReadOnlyStatus(Exception):
    @property
    def status(self) -> int:
        return 500


@pytest.mark.parametrize("cls", [Picky, ReadOnlyStatus], ids=["no-subclass", "read-only-attr"])
def test_a_class_that_cannot_be_mixed_falls_back_to_task_failed_error(
    cls: type[Exception],
) -> None:
    error = _raised(_record(Failure.of(cls("odd"))))
    assert type(error) is TaskFailedError


def _edited(**fields: str) -> Task:
    return _record(Failure.of(_caught(refuse)).model_copy(update=fields))


@pytest.mark.parametrize(
    "fields",
    [
        {"module": "no_such_module_for_bgcoor"},
        {"module": "os; import this"},
        {"module": ""},
        {"module": "class.def"},
        {"type": "refuse.<locals>.Refused"},
        {"type": "Missing"},
        {"type": "refuse"},  # a function, not a class
        {"type": "FAST"},  # a dict
        {"module": "builtins", "type": "SystemExit"},  # not an Exception: never raised
        {"module": "builtins", "type": "KeyboardInterrupt"},
        {"module": "bgcoor_core._errors", "type": "TaskFailedError"},
        {"module": "bgcoor_core._errors", "type": "WorkflowFailedError"},
    ],
)
def test_a_class_not_found_here_gives_a_plain_task_failed_error(fields: dict[str, str]) -> None:
    error = _raised(_edited(**fields))
    assert type(error) is TaskFailedError


def test_a_name_bound_to_another_class_is_not_taken_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = types.ModuleType("bgcoor_aliases")
    exec("class Real(Exception):\n    pass\n", module.__dict__)
    module.Alias = module.Real  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    error = _raised(_edited(module="bgcoor_aliases", type="Alias"))
    assert type(error) is TaskFailedError
    assert isinstance(_raised(_edited(module="bgcoor_aliases", type="Real")), module.Real)


def test_finding_a_class_never_imports_and_never_calls_module_getattr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    probe = tmp_path / "bgcoor_probe_errors.py"
    imported = tmp_path / "imported"
    probe.write_text(
        f"open({str(imported)!r}, 'a').close()\n"
        "class ProbeError(Exception):\n    pass\n"
        "def __getattr__(name):\n"
        f"    open({str(tmp_path / 'getattr')!r}, 'a').close()\n"
        "    raise AttributeError(name)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bgcoor_probe_errors", raising=False)
    # Not imported: a plain TaskFailedError, and still not imported afterwards.
    error = _raised(_edited(module="bgcoor_probe_errors", type="ProbeError"))
    assert type(error) is TaskFailedError
    assert "bgcoor_probe_errors" not in sys.modules
    assert not imported.exists()
    # Imported: found, and a missing name is not looked up through __getattr__.
    module = __import__("bgcoor_probe_errors")
    monkeypatch.setitem(sys.modules, "bgcoor_probe_errors", module)
    assert isinstance(
        _raised(_edited(module="bgcoor_probe_errors", type="ProbeError")), module.ProbeError
    )
    assert type(_raised(_edited(module="bgcoor_probe_errors", type="Gone"))) is TaskFailedError
    assert not (tmp_path / "getattr").exists()


async def test_a_class_whose_module_is_gone_is_read_and_raised_plain(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("bgcoor_vanishing_errors")
    exec("class VanishingError(Exception):\n    pass\n", module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)

    @manager.task(name="fail.vanishing", max_retries=0)
    def vanishing() -> None:
        raise module.VanishingError("went away")

    handle = await vanishing.enqueue()
    await manager.drain()
    monkeypatch.delitem(sys.modules, module.__name__)  # the reader cannot import it
    record = await manager.get(handle.id)
    assert record.failure is not None
    assert (record.failure.type, record.failure.module, record.failure.message) == (
        "VanishingError",
        "bgcoor_vanishing_errors",
        "went away",
    )
    with pytest.raises(TaskFailedError) as info:
        await handle.result(timeout=5)
    assert type(info.value) is TaskFailedError
    assert info.value.failure == record.failure
    assert info.value.error == "VanishingError: went away"


def test_a_record_written_before_failures_has_none() -> None:
    old = Task.new("t", status=TaskStatus.FAILED, error="ValueError: old", traceback="tb")
    data = old.model_dump(mode="json")
    del data["failure"]
    record = Task.model_validate(data)
    assert record.failure is None
    error = _raised(record)
    assert type(error) is TaskFailedError
    assert error.failure is None


def test_the_error_pickles_and_unpickles_as_both() -> None:
    record = _record(Failure.of(_caught(refuse)))
    error = _raised(record)
    again = pickle.loads(pickle.dumps(error))
    assert isinstance(again, Refused)
    assert isinstance(again, TaskFailedError)
    assert (again.task_id, again.failure, str(again)) == (error.task_id, error.failure, str(error))
    plain = TaskFailedError("t1", "failed", "ValueError: x", "tb", record.failure)
    copied = pickle.loads(pickle.dumps(plain))
    assert (copied.task_id, copied.error, copied.failure, str(copied)) == (
        "t1",
        "ValueError: x",
        record.failure,
        str(plain),
    )


def test_task_failed_error_keeps_its_positional_constructor() -> None:
    error = TaskFailedError("t1", "dead", "KeyError: 'k'", None)
    assert (error.failure, str(error)) == (None, "task t1 ended dead: KeyError: 'k'")


def test_a_task_that_let_another_task_failure_through_names_it_as_a_cause() -> None:
    inner = _raised(_record(Failure.of(_caught(refuse))))
    failure = Failure.of(inner)
    assert (failure.type, failure.module) == ("TaskFailedError", "bgcoor_core._errors")
    assert _chain_of(failure)[:3] == [
        ("Refused", "503 try later", False),
        ("ConnectionError", "upstream down", False),
        ("KeyError", "'account'", True),
    ]
    assert type(_raised(_record(failure))) is TaskFailedError


# -- workflows ----------------------------------------------------------------------------


def test_a_workflow_failure_marker_carries_the_failure_without_its_traceback() -> None:
    record = _record(Failure.of(_caught(refuse)), TaskStatus.DEAD)
    marker = failure_marker(record)["bgcoor_failed"]
    assert marker["error"] == "Refused: 503 try later"
    assert marker["failure"]["type"] == "Refused"
    assert marker["failure"]["module"] == __name__
    assert [c["type"] for c in marker["failure"]["causes"]] == ["ConnectionError", "KeyError"]
    assert "traceback" not in marker["failure"]
    cancelled = Task.new("t", status=TaskStatus.CANCELLED, error="cancelled")
    assert failure_marker(cancelled)["bgcoor_failed"]["failure"] is None
