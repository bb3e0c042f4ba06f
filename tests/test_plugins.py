"""Plugin discovery, programmatic plugins, scheme conflicts, load failures, lifecycle hooks."""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pluggy
import pytest

import bgcoor_core._plugins as plugins_module
from bgcoor_core import (
    BackendContext,
    BrokerRegistry,
    DecodeError,
    DuplicateSchemeError,
    MemoryBroker,
    MemoryStorage,
    NonRetryableError,
    PayloadError,
    PluginError,
    PluginLoadError,
    SerializerRegistry,
    StorageRegistry,
    Task,
    TaskManager,
    TaskRegistry,
    TaskStatus,
    UnknownSchemeError,
    build_plugin_host,
    hookimpl,
    kit,
    load_settings,
)
from bgcoor_core._codec import JsonSerializer
from bgcoor_core.backends.memory import _memory_broker, _memory_storage
from bgcoor_core.backends.sqlite import SQLiteBackend


def make_plugin(name: str, **hooks: Callable[..., Any]) -> types.ModuleType:
    """A plugin module called ``name`` whose hook implementations are ``hooks``."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, hookimpl(fn))
    return module


def broker_plugin(name: str, scheme: str) -> types.ModuleType:
    def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
        brokers.add(scheme, _memory_broker)

    return make_plugin(name, bgcoor_register_brokers=bgcoor_register_brokers)


@dataclass
class FakeDist:
    name: str
    version: str


class BrokenEntryPoint:
    """Looks like an importlib.metadata EntryPoint whose module fails to import."""

    def __init__(self, name: str, dist: FakeDist) -> None:
        self.name = name
        self.group = "bgcoor"
        self.value = f"{name}_plugin.module"
        self.dist = dist

    def load(self) -> Any:
        raise ImportError(f"No module named '{self.name}_plugin'")


@pytest.fixture
def broken_entry_point(monkeypatch: pytest.MonkeyPatch) -> BrokenEntryPoint:
    """Adds a failing ``broken`` entry point to the real ones."""
    broken = BrokenEntryPoint("broken", FakeDist("broken-dist", "1.2.3"))

    def fake_entry_points(*, group: str) -> list[Any]:
        return [*entry_points(group=group), broken]

    monkeypatch.setattr(plugins_module, "entry_points", fake_entry_points)
    return broken


# -- discovery -------------------------------------------------------------------------


def test_builtins_are_discovered_through_the_entry_point_group() -> None:
    host = build_plugin_host()
    names = {name for name, _ in host.pm.list_name_plugin()}
    assert {"memory", "json"} <= names
    infos = {info.name: info for info in host.describe()}
    assert infos["memory"].distribution == "bgcoor"
    assert infos["json"].distribution == "bgcoor"
    assert "broker memory://" in infos["memory"].provides
    assert "storage memory://" in infos["memory"].provides
    assert "serializer application/json" in infos["json"].provides
    assert host.failures == []


def test_without_entry_points_there_is_no_memory_backend() -> None:
    """Nothing is special-cased: memory:// exists only because its entry point loaded."""
    host = build_plugin_host(load_entry_points=False)
    assert host.brokers.schemes() == []
    with pytest.raises(UnknownSchemeError, match="available: none"):
        host.brokers.lookup("memory://")


def test_memory_entry_point_is_declared_by_our_distribution() -> None:
    eps = {ep.name: ep for ep in entry_points(group="bgcoor")}
    assert isinstance(eps["memory"], EntryPoint)
    assert eps["memory"].value == "bgcoor_core.backends.memory"
    assert eps["memory"].dist is not None
    assert eps["memory"].dist.name == "bgcoor"
    assert eps["json"].value == "bgcoor_core.serializers"


def test_disabled_plugins_are_not_loaded() -> None:
    host = build_plugin_host(disabled=["memory"])
    assert "memory" not in {name for name, _ in host.pm.list_name_plugin()}
    assert "memory" not in host.brokers.schemes()


def test_make_backends_builds_memory_from_settings() -> None:
    host = build_plugin_host()
    broker, storage = host.make_backends(
        load_settings(broker_url="memory://", storage_url="memory://")
    )
    assert isinstance(broker, MemoryBroker)
    assert isinstance(storage, MemoryStorage)


async def test_default_settings_share_one_sqlite_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    broker, storage = build_plugin_host().make_backends(load_settings())
    assert isinstance(broker, SQLiteBackend)
    assert storage is broker  # one object, so outcome and ack are stored atomically
    assert await storage.counts() == dict.fromkeys(TaskStatus, 0)
    await broker.close()
    assert (tmp_path / "bgcoor.db").exists()


# -- programmatic registration ---------------------------------------------------------


def test_programmatic_plugin_module_provides_a_scheme() -> None:
    made: list[str] = []

    def factory(url: str, context: BackendContext) -> MemoryBroker:
        made.append(url)
        return MemoryBroker(context.codec)

    def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
        brokers.add("custom", factory)

    def bgcoor_register_storages(storages: StorageRegistry) -> None:
        storages.add("custom", _memory_storage)

    plugin = make_plugin(
        "custom_plugin",
        bgcoor_register_brokers=bgcoor_register_brokers,
        bgcoor_register_storages=bgcoor_register_storages,
    )
    host = build_plugin_host(plugins=[plugin])
    assert host.brokers.schemes() == ["custom", "memory", *_others(host)]
    settings = load_settings(broker_url="custom://host/0", storage_url="custom://x")
    broker, storage = host.make_backends(settings)
    assert isinstance(broker, MemoryBroker)
    assert isinstance(storage, MemoryStorage)
    assert made == ["custom://host/0"]
    info = {i.name: i for i in host.describe()}["custom_plugin"]
    assert "broker custom://" in info.provides


def _others(host: Any) -> list[str]:
    """Schemes besides custom and memory that installed plugins add (e.g. sqlite)."""
    return [s for s in host.brokers.schemes() if s not in ("custom", "memory")]


def test_programmatic_plugin_object_registered_on_the_host() -> None:
    class RedisLike:
        @hookimpl
        def bgcoor_register_brokers(self, brokers: BrokerRegistry) -> None:
            brokers.add("fake-redis", _memory_broker)

    host = build_plugin_host()
    assert "fake-redis" not in host.brokers.schemes()
    host.register(RedisLike(), name="redis_like")
    assert "fake-redis" in host.brokers.schemes()
    assert host.brokers.lookup("FAKE-REDIS://h").plugin == "redis_like"


def test_unknown_scheme_lists_schemes_and_suggests_the_closest() -> None:
    host = build_plugin_host()
    with pytest.raises(UnknownSchemeError) as info:
        host.brokers.lookup("memroy://")
    message = str(info.value)
    assert "'memroy'" in message
    assert "available: " in message
    assert "memory" in message
    assert "did you mean 'memory'?" in message
    with pytest.raises(UnknownSchemeError, match="no storage for URL scheme 'memroy'"):
        host.storages.lookup("memroy://")


def test_unknown_scheme_without_anything_close() -> None:
    host = build_plugin_host()
    with pytest.raises(UnknownSchemeError, match=r"available: .*memory") as info:
        host.brokers.lookup("zzzzqqq://")
    assert "did you mean" not in str(info.value)


def test_unknown_scheme_hides_passwords() -> None:
    host = build_plugin_host()
    with pytest.raises(UnknownSchemeError) as info:
        host.brokers.lookup("memroy://user:s3cret@host/0")
    assert "s3cret" not in str(info.value)
    assert "***" in str(info.value)


def test_task_manager_with_unknown_scheme_fails_clearly() -> None:
    manager = TaskManager(broker_url="memroy://", storage_url="memory://")
    with pytest.raises(UnknownSchemeError, match="did you mean 'memory'"):
        _ = manager.broker


def test_duplicate_scheme_names_both_plugins() -> None:
    host = build_plugin_host(plugins=[broker_plugin("copycat_plugin", "memory")])
    with pytest.raises(DuplicateSchemeError) as info:
        _ = host.brokers
    message = str(info.value)
    assert "'memory'" in message
    assert "'copycat_plugin'" in message
    assert "'memory' and 'copycat_plugin'" in message or "'copycat_plugin' and" in message


def test_duplicate_scheme_between_two_programmatic_plugins() -> None:
    host = build_plugin_host(
        plugins=[broker_plugin("first_plugin", "dup"), broker_plugin("second_plugin", "dup")],
        load_entry_points=False,
    )
    with pytest.raises(DuplicateSchemeError, match="first_plugin") as info:
        _ = host.brokers
    assert "second_plugin" in str(info.value)
    assert isinstance(info.value, PluginError)


# -- load failures ---------------------------------------------------------------------


def test_failing_entry_point_names_plugin_and_distribution(
    broken_entry_point: BrokenEntryPoint,
) -> None:
    with pytest.raises(PluginLoadError) as info:
        build_plugin_host()
    error = info.value
    assert error.name == "broken"
    assert error.distribution == "broken-dist"
    assert "'broken'" in str(error)
    assert "'broken-dist'" in str(error)
    assert "ImportError" in str(error)
    assert isinstance(error.cause, ImportError)


def test_failing_entry_point_is_listed_when_not_strict(
    broken_entry_point: BrokenEntryPoint,
) -> None:
    host = build_plugin_host(strict=False)
    assert len(host.failures) == 1
    failure = host.failures[0]
    assert failure.name == "broken"
    assert failure.distribution == "broken-dist"
    assert "ImportError" in failure.error
    # everything else still loaded
    assert "memory" in host.brokers.schemes()


def test_failing_entry_point_can_be_disabled(broken_entry_point: BrokenEntryPoint) -> None:
    host = build_plugin_host(disabled=["broken"])
    assert host.failures == []


def test_a_plugin_that_raises_in_a_register_hook_is_named() -> None:
    def bgcoor_register_brokers(brokers: BrokerRegistry) -> None:
        raise KeyError("missing config")

    host = build_plugin_host(
        plugins=[make_plugin("flaky_plugin", bgcoor_register_brokers=bgcoor_register_brokers)]
    )
    with pytest.raises(PluginError, match="'flaky_plugin' failed in bgcoor_register_brokers"):
        _ = host.brokers


def test_misspelled_hook_is_rejected() -> None:
    def bgcoor_task_succeded(task: Task) -> None:  # sic
        pass

    typo = make_plugin("typo_plugin", bgcoor_task_succeded=bgcoor_task_succeded)
    with pytest.raises(pluggy.PluginValidationError, match="bgcoor_task_succeded"):
        build_plugin_host(plugins=[typo])


def test_misspelled_hook_registered_later_is_rejected_and_does_not_poison_the_host() -> None:
    def bgcoor_register_broker(brokers: BrokerRegistry) -> None:  # sic: no s
        pass

    host = build_plugin_host()
    with pytest.raises(pluggy.PluginValidationError, match="bgcoor_register_broker"):
        host.register(make_plugin("typo_plugin", bgcoor_register_broker=bgcoor_register_broker))
    # A correct plugin registered afterwards works.
    host.register(broker_plugin("good_plugin", "good"))
    assert "good" in host.brokers.schemes()


def test_hook_with_wrong_argument_name_is_rejected() -> None:
    def bgcoor_task_started(job: Task) -> None:
        pass

    with pytest.raises(pluggy.PluginValidationError):
        build_plugin_host(
            plugins=[make_plugin("bad_args", bgcoor_task_started=bgcoor_task_started)]
        )


# -- serializers from plugins ---------------------------------------------------------


class ReversedJson:
    """A toy serializer: JSON, bytes reversed; rich values as ``kit.pack`` tags them."""

    content_type = "application/x-reversed-json"

    def dumps(self, data: Any) -> bytes:
        return json.dumps(kit.pack(data)).encode()[::-1]

    def loads(self, raw: bytes) -> Any:
        return kit.unpack(json.loads(raw[::-1]))


def reversed_json_plugin() -> types.ModuleType:
    def bgcoor_register_serializers(serializers: SerializerRegistry) -> None:
        serializers.add(ReversedJson())

    return make_plugin("reversed_json", bgcoor_register_serializers=bgcoor_register_serializers)


async def test_a_plugin_serializer_carries_tasks_end_to_end(fast: dict[str, Any]) -> None:
    ct = ReversedJson.content_type
    manager = TaskManager(plugins=[reversed_json_plugin()], serializer=ct, **fast)

    @manager.task
    def greet(name: str) -> str:
        return f"hello, {name}"

    try:
        assert manager.broker.codec.content_type == ct
        assert manager.broker.codec.encode(Task.new("t")).startswith(ct.encode() + b"\n")
        handle = await greet.enqueue("plugin")
        assert await manager.drain(raise_errors=True) == 1
        assert await handle.result(timeout=5) == "hello, plugin"
    finally:
        await manager.close()
    info = {i.name: i for i in manager.host.describe()}["reversed_json"]
    assert info.provides == [f"serializer {ct}"]


def test_a_serializer_not_accepted_is_refused_when_decoding() -> None:
    host = build_plugin_host(plugins=[reversed_json_plugin()])
    producer = host.make_codec(load_settings(serializer=ReversedJson.content_type))
    consumer = host.make_codec(load_settings(accept_content="json"))  # accepts JSON only
    body = producer.encode(Task.new("t"))
    with pytest.raises(DecodeError, match="refused message with content type"):
        consumer.decode(body)
    pickled = host.make_codec(load_settings(serializer="pickle"))
    with pytest.raises(DecodeError, match="x-python-pickle"):
        consumer.decode(pickled.encode(Task.new("t")))


def test_by_default_every_installed_format_but_pickle_is_accepted() -> None:
    host = build_plugin_host(plugins=[reversed_json_plugin()])
    consumer = host.make_codec(load_settings())
    installed = set(host.serializers.serializers)
    assert consumer.accepted == installed - {"application/x-python-pickle"}
    assert {"application/json", ReversedJson.content_type} <= consumer.accepted
    producer = host.make_codec(load_settings(serializer="application/x-reversed-json"))
    assert consumer.decode(producer.encode(Task.new("t", {"n": 1}))).payload == {"n": 1}
    pickled = host.make_codec(load_settings(serializer="pickle"))
    with pytest.raises(DecodeError, match=r"x-python-pickle.*not accepted"):
        consumer.decode(pickled.encode(Task.new("t")))
    # Named, pickle is accepted; the producer's own format always is.
    assert "application/x-python-pickle" in pickled.accepted
    both = host.make_codec(load_settings(accept_content="json,pickle"))
    assert both.accepted == {"application/json", "application/x-python-pickle"}


def test_two_plugins_providing_one_content_type_are_named() -> None:
    def bgcoor_register_serializers(serializers: SerializerRegistry) -> None:
        serializers.add(JsonSerializer())

    host = build_plugin_host(
        plugins=[make_plugin("json_clone", bgcoor_register_serializers=bgcoor_register_serializers)]
    )
    with pytest.raises(PluginError, match="'json' and 'json_clone'"):
        _ = host.serializers


def test_an_unknown_serializer_setting_lists_what_exists() -> None:
    host = build_plugin_host()
    wanted = (
        r"no serializer for 'application/x-nothing' \(BGCOOR_SERIALIZER.*json \(application/json\)"
    )
    with pytest.raises(PayloadError, match=wanted):
        host.make_codec(load_settings(serializer="application/x-nothing"))
    with pytest.raises(PayloadError, match="no serializer for 'yaml'"):
        host.make_codec(load_settings(accept_content="json,yaml"))


# -- task handlers from plugins --------------------------------------------------------


class Doubler:
    async def run(self, payload: Any) -> Any:
        return payload["n"] * 2


def third_party_tasks() -> types.ModuleType:
    def add(x: int, y: int) -> int:
        return x + y

    def bgcoor_register_tasks(tasks: TaskRegistry) -> None:
        tasks.register("thirdparty.add", add)
        tasks.register("thirdparty.double", Doubler())

    return make_plugin("thirdparty", bgcoor_register_tasks=bgcoor_register_tasks)


async def test_register_tasks_hook_fills_a_managers_registry(fast: dict[str, Any]) -> None:
    manager = TaskManager(plugins=[third_party_tasks()], **fast)
    try:
        _ = manager.host
        assert {"thirdparty.add", "thirdparty.double"} <= set(manager.registry.names())
        double = await manager.submit(Task.new("thirdparty.double", {"n": 21}))
        await manager.drain(raise_errors=True)
        assert await double.result(timeout=5) == 42
    finally:
        await manager.close()


async def test_plugin_task_enqueued_by_name_on_a_fresh_manager(fast: dict[str, Any]) -> None:
    manager = TaskManager(plugins=[third_party_tasks()], **fast)
    try:
        handle = await manager.enqueue("thirdparty.add", 2, 3)
        assert await manager.drain(raise_errors=True) == 1
        assert await handle.result(timeout=5) == 5
    finally:
        await manager.close()


# -- lifecycle events ------------------------------------------------------------------


class Recorder:
    """Observes every lifecycle hook, remembering the task status seen at call time."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, TaskStatus]] = []
        self.delays: list[float] = []
        self.reasons: list[str] = []

    def _add(self, event: str, task: Task) -> None:
        self.events.append((event, task.name.rsplit(".", 1)[-1], task.status))

    def of(self, task_name: str) -> list[tuple[str, TaskStatus]]:
        return [(e, s) for e, n, s in self.events if n == task_name]

    @hookimpl
    def bgcoor_task_enqueued(self, task: Task) -> None:
        self._add("enqueued", task)

    @hookimpl
    def bgcoor_task_started(self, task: Task) -> None:
        self._add("started", task)

    @hookimpl
    def bgcoor_task_succeeded(self, task: Task) -> None:
        self._add("succeeded", task)

    @hookimpl
    def bgcoor_task_failed(self, task: Task) -> None:
        self._add("failed", task)

    @hookimpl
    def bgcoor_task_retrying(self, task: Task, delay: float) -> None:
        self._add("retrying", task)
        self.delays.append(delay)

    @hookimpl
    def bgcoor_task_dead_lettered(self, task: Task, reason: str) -> None:
        self._add("dead_lettered", task)
        self.reasons.append(reason)

    @hookimpl
    def bgcoor_task_cancelled(self, task: Task) -> None:
        self._add("cancelled", task)


async def test_every_lifecycle_hook_is_observed_with_the_right_status(
    fast: dict[str, Any],
) -> None:
    recorder = Recorder()
    manager = TaskManager(plugins=[recorder], **fast)
    S = TaskStatus

    @manager.task(max_retries=1)
    async def ok() -> int:
        return 1

    @manager.task(max_retries=1)
    async def always_fails() -> None:
        raise ValueError("nope")

    @manager.task(max_retries=3)
    def refuses() -> None:
        raise NonRetryableError("bad input")

    @manager.task
    async def cancelled() -> None:
        raise AssertionError("a cancelled task must not run")

    try:
        await ok.enqueue()
        failing = await always_fails.enqueue()
        await refuses.enqueue()
        doomed = await cancelled.enqueue()
        assert await doomed.cancel() is True
        async with manager.worker(concurrency=2):
            with pytest.raises(Exception, match="nope"):
                await failing.result(timeout=5)
            await manager.drain()  # nothing left; the pool took everything
        await manager.drain()
    finally:
        await manager.close()

    assert recorder.of("ok") == [
        ("enqueued", S.PENDING),
        ("started", S.RUNNING),
        ("succeeded", S.SUCCEEDED),
    ]
    assert recorder.of("always_fails") == [
        ("enqueued", S.PENDING),
        ("started", S.RUNNING),
        ("retrying", S.RETRYING),
        ("started", S.RUNNING),
        ("dead_lettered", S.DEAD),
    ]
    assert recorder.of("refuses") == [
        ("enqueued", S.PENDING),
        ("started", S.RUNNING),
        ("failed", S.FAILED),
    ]
    assert recorder.of("cancelled") == [("enqueued", S.PENDING), ("cancelled", S.CANCELLED)]
    assert len(recorder.delays) == 1
    assert 0 < recorder.delays[0] <= fast["retry_backoff_max"]
    assert recorder.reasons == ["max_retries exceeded (1)"]


async def test_an_observer_that_raises_does_not_break_processing(
    caplog: pytest.LogCaptureFixture, fast: dict[str, Any]
) -> None:
    class Broken:
        @hookimpl
        def bgcoor_task_started(self, task: Task) -> None:
            raise RuntimeError("observer bug")

        @hookimpl
        def bgcoor_task_succeeded(self, task: Task) -> None:
            raise RuntimeError("observer bug")

        @hookimpl
        def bgcoor_task_enqueued(self, task: Task) -> None:
            raise RuntimeError("observer bug")

    manager = TaskManager(plugins=[Broken()], **fast)

    @manager.task
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        handle = await add.enqueue(1, 2)
        assert await manager.drain(raise_errors=True) == 1
        assert await handle.result(timeout=5) == 3
        assert (await handle.info()).attempts == 1
    finally:
        await manager.close()
    assert "lifecycle hook bgcoor_task_started raised" in caplog.text


async def test_a_raising_observer_does_not_hide_the_event_from_others(
    fast: dict[str, Any],
) -> None:
    seen: list[str] = []

    class Broken:
        @hookimpl
        def bgcoor_task_succeeded(self, task: Task) -> None:
            raise RuntimeError("observer bug")

    class Watcher:
        @hookimpl
        def bgcoor_task_succeeded(self, task: Task) -> None:
            seen.append(task.id)

    # pluggy calls later-registered implementations first: register the broken one last
    manager = TaskManager(plugins=[Watcher(), Broken()], **fast)

    @manager.task
    async def one() -> int:
        return 1

    try:
        handle = await one.enqueue()
        await manager.drain()
        assert seen == [handle.id]
    finally:
        await manager.close()


def test_unnamed_plugin_objects_get_a_readable_name() -> None:
    class Observer:
        @hookimpl
        def bgcoor_task_started(self, task: Task) -> None: ...

    host = build_plugin_host(plugins=[Observer()], load_entry_points=False)
    names = [name for name, _ in host.pm.list_name_plugin()]
    assert any(
        name.startswith("test_unnamed_plugin_objects_get_a_readable_name.<locals>.Observer@")
        for name in names
    ), names


def test_installed_plugins_cost_nothing_until_their_url_is_opened() -> None:
    """Every installed plugin's hooks load at start; their drivers must not, or each
    backend installed would weigh on every process (memory, start-up time)."""
    import subprocess
    import sys

    drivers = ["redis", "hiredis", "asyncpg"]
    probe = (
        "import sys, bgcoor_core\n"
        "host = bgcoor_core.build_plugin_host()\n"
        "print(sorted(host.brokers.entries))\n"
        f"print([d for d in {drivers!r} if d in sys.modules])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    schemes = set(json.loads(out[0].replace("'", '"')))
    assert {"redis", "postgresql"} <= schemes  # the plugins are installed and registered
    assert out[1] == "[]"
