"""Building the plugin manager, and the one typed facade the core calls hooks through."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from . import hookspecs as _hookspecs
from ._backend_registry import (
    BackendContext,
    BrokerRegistry,
    SerializerRegistry,
    StorageRegistry,
    redact,
)
from ._codec import Codec
from ._errors import BgcoorError, PluginError, PluginLoadError
from ._extensions import OptionRegistry, ServiceRegistry, WorkerOptionRegistry
from ._payload_codecs import BUILT_IN as BUILT_IN_PAYLOAD_CODECS
from ._payload_codecs import PayloadCodecRegistry
from ._task_registry import CORE_OPTION_NAMES

if TYPE_CHECKING:
    import typer

    from ._broker import Broker
    from ._cancels import CancelSignals
    from ._context import CurrentTask
    from ._settings import Settings
    from ._storage import Storage
    from ._task import Task
    from ._task_registry import TaskRegistry

log = logging.getLogger("bgcoor.plugins")
GROUP = "bgcoor"


@dataclass(frozen=True, slots=True)
class PluginFailure:
    name: str
    distribution: str
    error: str


@dataclass(slots=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    provides: list[str] = field(default_factory=list)


class PluginHost:
    """Typed facade over the pluggy manager: one method per hook the core calls."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        dists: dict[str, tuple[str, str]],
        failures: list[PluginFailure],
    ) -> None:
        self.pm = pm
        self.failures = failures
        self._dists = dists
        self._brokers: BrokerRegistry | None = None
        self._storages: StorageRegistry | None = None
        self._serializers: SerializerRegistry | None = None
        self._payload_codecs: PayloadCodecRegistry | None = None
        self._options: OptionRegistry | None = None
        self._refresh_observers()

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin programmatically (after entry points were loaded)."""
        self.pm.register(plugin, name=name)
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            self.pm.unregister(plugin)  # a rejected plugin must not fail every later register
            raise
        self._brokers = self._storages = self._serializers = None
        self._payload_codecs = None
        self._options = None
        self._refresh_observers()

    # -- register-style hooks ----------------------------------------------------------

    @property
    def brokers(self) -> BrokerRegistry:
        if self._brokers is None:
            self._brokers = BrokerRegistry()
            self._collect("bgcoor_register_brokers", self._brokers)
        return self._brokers

    @property
    def storages(self) -> StorageRegistry:
        if self._storages is None:
            self._storages = StorageRegistry()
            self._collect("bgcoor_register_storages", self._storages)
        return self._storages

    @property
    def serializers(self) -> SerializerRegistry:
        if self._serializers is None:
            self._serializers = SerializerRegistry()
            self._collect("bgcoor_register_serializers", self._serializers)
        return self._serializers

    @property
    def payload_codecs(self) -> PayloadCodecRegistry:
        """The core's payload codecs (``zstd``, ``aesgcm``) and the plugins'."""
        if self._payload_codecs is None:
            registry = PayloadCodecRegistry()
            registry.current_plugin = "bgcoor"
            for name, factory in BUILT_IN_PAYLOAD_CODECS:
                registry.add(name, factory)
            self._collect("bgcoor_register_payload_codecs", registry)
            self._payload_codecs = registry
        return self._payload_codecs

    def register_tasks(self, tasks: TaskRegistry) -> None:
        self._collect("bgcoor_register_tasks", tasks)

    def services(self) -> ServiceRegistry:
        """The worker services plugins add (a fresh registry per pool)."""
        services = ServiceRegistry()
        self._collect("bgcoor_register_services", services)
        return services

    @property
    def task_options(self) -> OptionRegistry:
        if self._options is None:
            self._options = OptionRegistry(CORE_OPTION_NAMES)
            self._collect("bgcoor_register_task_options", self._options)
        return self._options

    def register_commands(self, cli: typer.Typer) -> None:
        self._collect("bgcoor_register_commands", cli)

    def worker_options(self) -> WorkerOptionRegistry:
        """The options plugins add to ``bgcoor worker``."""
        options = WorkerOptionRegistry()
        self._collect("bgcoor_register_worker_options", options)
        return options

    def _collect(self, hook_name: str, registry: Any) -> None:
        """Call a register-style hook through pluggy (wrappers and ordering honoured);
        each plain implementation is adapted (see :meth:`_adapt`) so the registry knows
        which plugin adds what and an error names the plugin."""
        getattr(self.pm.hook, hook_name)(**{_REGISTER_ARGS[hook_name]: registry})

    def _adapt(self) -> None:
        """Wrap every plain hook implementation once, where pluggy calls it: a register
        hook's tells its registry which plugin is calling and turns an error into a
        :class:`PluginError` naming the plugin; an observer's logs its error, so one
        misbehaving plugin neither breaks task processing nor hides events from others.
        Wrappers (``wrapper=True``) are left as they are: pluggy drives them."""
        for hook_name in (*_REGISTER_ARGS, *_OBSERVERS):
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.wrapper or impl.hookwrapper or hasattr(impl.function, _ADAPTED):
                    continue
                adapt = _register_call if hook_name in _REGISTER_ARGS else _observer_call
                impl.function = adapt(impl.function, impl.plugin_name, hook_name)

    # -- assembling backends -----------------------------------------------------------

    def make_codec(self, settings: Settings) -> Codec:
        """The codec of the settings: their serializer, accepted types, limits and
        payload codecs (a codec the settings name that cannot work here, an unknown one,
        one whose library is missing, is a :class:`SettingsError` now)."""
        chain, openers = self.payload_codecs.build(settings)
        return Codec(
            self.serializers.serializers,
            content_type=settings.serializer,
            accept=settings.accept_content,
            max_payload_bytes=settings.max_payload_bytes,
            max_result_bytes=settings.max_result_bytes,
            claim_check_bytes=settings.claim_check_max_bytes if settings.claim_check else None,
            payload_codecs=chain,
            openers=openers,
        )

    def make_backends(self, settings: Settings) -> tuple[Broker, Storage]:
        """Broker and storage for the settings' URLs; one object if it can serve as both."""
        from ._storage import Storage

        context = BackendContext(settings, self.make_codec(settings))
        broker_entry = self.brokers.lookup(settings.broker_url)
        storage_entry = self.storages.lookup(settings.storage_url)
        broker = broker_entry.factory(settings.broker_url, context)
        if settings.storage_url == settings.broker_url and isinstance(broker, Storage):
            return broker, broker  # one object, both roles
        storage = storage_entry.factory(settings.storage_url, context)
        log.debug(
            "broker %s, storage %s", redact(settings.broker_url), redact(settings.storage_url)
        )
        return broker, storage

    def cancel_signals(self, broker: Broker, storage: Storage) -> CancelSignals | None:
        """The channel a plugin offers to carry cancel signals between the processes using
        these backends (``bgcoor_cancel_signals``); ``None``: pools poll their running
        tasks' records instead. A plugin that raises here is logged, and polling used."""
        try:
            found: CancelSignals | None = self.pm.hook.bgcoor_cancel_signals(
                broker=broker, storage=storage
            )
        except Exception:
            log.exception("hook bgcoor_cancel_signals raised; cancels are found by polling")
            return None
        return found

    # -- lifecycle events --------------------------------------------------------------

    def _refresh_observers(self) -> None:
        self._adapt()
        hook = self.pm.hook
        self._observed = {name for name in _OBSERVERS if getattr(hook, name).get_hookimpls()}
        #: Whether any plugin wraps execution: the executor skips all of it otherwise.
        self.wraps_execution = bool(hook.bgcoor_wrap_execution.get_hookimpls())

    def _emit(self, name: str, **kwargs: Any) -> None:
        if name not in self._observed:
            return
        try:
            getattr(self.pm.hook, name)(**kwargs)
        except Exception:  # raised by a wrapper; plain observers log their own errors
            log.exception("hook %s raised", name)

    def before_enqueue(self, task: Task) -> None:
        self._emit("bgcoor_before_enqueue", task=task)

    def execution_wrappers(self, current: CurrentTask) -> list[Any]:
        """The context managers plugins wrap this attempt in, outermost first."""
        found = self.pm.hook.bgcoor_wrap_execution(current=current)
        return [cm for cm in found if cm is not None]

    def task_enqueued(self, task: Task) -> None:
        self._emit("bgcoor_task_enqueued", task=task)

    def task_started(self, task: Task) -> None:
        self._emit("bgcoor_task_started", task=task)

    def task_succeeded(self, task: Task) -> None:
        self._emit("bgcoor_task_succeeded", task=task)

    def task_failed(self, task: Task) -> None:
        self._emit("bgcoor_task_failed", task=task)

    def task_retrying(self, task: Task, delay: float) -> None:
        self._emit("bgcoor_task_retrying", task=task, delay=delay)

    def task_dead_lettered(self, task: Task, reason: str) -> None:
        self._emit("bgcoor_task_dead_lettered", task=task, reason=reason)

    def task_cancelled(self, task: Task) -> None:
        self._emit("bgcoor_task_cancelled", task=task)

    # -- introspection -----------------------------------------------------------------

    def describe(self) -> list[PluginInfo]:
        """Every registered plugin with its distribution and what it provides."""
        infos: dict[str, PluginInfo] = {}
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            dist, version = self._dists.get(name, ("-", "-"))
            infos[name] = PluginInfo(name, dist, version)
        for kind, reg in (("broker", self.brokers), ("storage", self.storages)):
            for entry in reg.entries.values():
                if entry.plugin in infos:
                    infos[entry.plugin].provides.append(f"{kind} {entry.scheme}://")
        for ct, owner in self.serializers.owners.items():
            if owner in infos:
                infos[owner].provides.append(f"serializer {ct}")
        for codec, owner in self.payload_codecs.owners.items():
            if owner in infos:
                infos[owner].provides.append(f"payload codec {codec}")
        return list(infos.values())


_EVENTS = tuple(name for name in dir(_hookspecs) if name.startswith("bgcoor_task_"))
#: Hooks whose implementations only observe: their errors are logged, not raised.
_OBSERVERS = (*_EVENTS, "bgcoor_before_enqueue")
#: Register-style hooks and the name of the registry argument each receives.
_REGISTER_ARGS = {
    "bgcoor_register_brokers": "brokers",
    "bgcoor_register_storages": "storages",
    "bgcoor_register_serializers": "serializers",
    "bgcoor_register_payload_codecs": "codecs",
    "bgcoor_register_tasks": "tasks",
    "bgcoor_register_services": "services",
    "bgcoor_register_task_options": "options",
    "bgcoor_register_commands": "cli",
    "bgcoor_register_worker_options": "options",
}
_ADAPTED = "__bgcoor_adapted__"


def _register_call(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        for arg in args:  # the registry, when the implementation takes it
            if hasattr(arg, "current_plugin"):
                arg.current_plugin = plugin
        try:
            return function(*args)
        except BgcoorError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {plugin!r} failed in {hook}: {type(exc).__name__}: {exc}"
            ) from exc

    setattr(call, _ADAPTED, True)
    return call


def _observer_call(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception:
            kind = "lifecycle hook" if hook in _EVENTS else "hook"
            log.exception("%s %s raised in plugin %r", kind, hook, plugin)
            return None

    setattr(call, _ADAPTED, True)
    return call


def build_plugin_host(
    *,
    plugins: Iterable[object] = (),
    disabled: Iterable[str] = (),
    load_entry_points: bool = True,
    strict: bool = True,
) -> PluginHost:
    """Add the specs, load ``bgcoor`` entry points (minus ``disabled``), register ``plugins``.

    With ``strict`` a plugin that fails to import raises :class:`PluginLoadError`; without,
    failures are collected in ``host.failures`` (the ``bgcoor plugins`` command lists them).
    """
    pm = pluggy.PluginManager(_hookspecs.PROJECT)
    pm.add_hookspecs(_hookspecs)
    dists: dict[str, tuple[str, str]] = {}
    failures: list[PluginFailure] = []
    blocked = set(disabled)
    if load_entry_points:
        for ep in entry_points(group=GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            if ep.name in blocked or pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                if strict:
                    raise PluginLoadError(ep.name, dist, exc) from exc
                failures.append(PluginFailure(ep.name, dist, f"{type(exc).__name__}: {exc}"))
                continue
            pm.register(plugin, name=ep.name)
            dists[ep.name] = (dist, version)
    for plugin in plugins:
        name = getattr(plugin, "__name__", None) or f"{type(plugin).__qualname__}@{id(plugin):x}"
        if name in blocked:
            continue
        pm.register(plugin, name=name)
    pm.check_pending()
    return PluginHost(pm, dists, failures)
