"""What installed plugins add to the command line: subcommands and ``bgcoor worker`` options.

Both come from the ``bgcoor_register_commands`` and ``bgcoor_register_worker_options``
hooks of the plugins installed as entry points, collected before the command line is
parsed (the application, and any ``TaskManager(plugins=...)``, is loaded only later).
Loading is lenient: a plugin that fails to import, or whose hook raises, costs a warning
on stderr and its own additions, never ``bgcoor --help`` or the other commands.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from .._extensions import WorkerOption, WorkerOptionRegistry
from .._plugins import PluginHost, build_plugin_host
from .._settings import PLUGIN_VARIABLES, load_settings
from ._output import clean


def warn(message: str) -> None:
    """``warning: <message>`` on stderr, on one line."""
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(Text.assemble(("warning: ", "bold yellow"), clean(message)))


def load_plugin_host() -> PluginHost | None:
    """The installed plugins (minus ``BGCOOR_DISABLE_PLUGINS``), or ``None`` with a warning
    when even that fails. Plugins that fail to import are left out here; every command that
    builds a manager reports them (and ``bgcoor plugins`` lists them)."""
    try:
        disabled = load_settings().disable_plugins
    except Exception:  # invalid settings: the command run reports them, in one line
        disabled = []
    try:
        return build_plugin_host(strict=False, disabled=disabled)
    except Exception as exc:
        warn(f"plugin commands and worker options not loaded: {type(exc).__name__}: {exc}")
        return None


def add_plugin_commands(cli: typer.Typer, host: PluginHost) -> None:
    """Let plugins add subcommands to ``cli``; one that would replace a core command is
    dropped with a warning."""
    core = _command_names(cli)
    commands, groups = len(cli.registered_commands), len(cli.registered_groups)
    for problem in call_each_plugin(host, "bgcoor_register_commands", cli=cli):
        warn(f"plugin commands: {problem}")
    for registered in (cli.registered_commands, cli.registered_groups):
        start = commands if registered is cli.registered_commands else groups
        for info in list(registered[start:]):
            name = _name(info)
            if name in core:
                registered.remove(info)  # type: ignore[arg-type]
                warn(f"a plugin's command {name!r} is not added: bgcoor has its own")


def worker_options(host: PluginHost | None) -> list[WorkerOption]:
    """The ``bgcoor worker`` options plugins add (none when loading them failed)."""
    if host is None:
        return []
    registry = WorkerOptionRegistry()
    for problem in call_each_plugin(host, "bgcoor_register_worker_options", options=registry):
        warn(f"plugin worker options: {problem}")
    # The plugin's variables are its settings, not unknown settings of the core.
    PLUGIN_VARIABLES.update(option.env for option in registry.options.values())
    return list(registry.options.values())


def call_each_plugin(host: PluginHost, hook_name: str, **kwargs: Any) -> list[str]:
    """Call a register hook one plugin at a time, so a plugin that raises costs only its
    own additions (pluggy stops at the first error); return the errors, which name the
    plugin (the host's adapted implementations say which one failed)."""
    problems = []
    plugins = {id(i.plugin): i.plugin for i in getattr(host.pm.hook, hook_name).get_hookimpls()}
    for plugin in plugins.values():
        others = [other for other in plugins.values() if other is not plugin]
        try:
            host.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
        except Exception as exc:
            problems.append(str(exc))
    return problems


def with_options(command: Callable[..., None], options: list[WorkerOption]) -> Callable[..., None]:
    """``command`` with plugin ``options`` appended to its signature, where Typer reads
    its options. Each is exported to its environment variable while the command line is
    parsed (a callback, not a value passed to ``command``), so before the app loads."""
    signature = inspect.signature(command, eval_str=True)
    taken = {o for p in signature.parameters.values() for o in _flags(p.annotation)}
    extra = []
    for index, option in enumerate(options):
        if option.flag in taken:
            warn(f"worker option {option.flag} of plugin {option.plugin!r} is not added: taken")
            continue
        taken.add(option.flag)
        extra.append(
            inspect.Parameter(
                f"plugin_option_{index}",
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=_annotation(option),
            )
        )
    if not extra:
        return command

    added = {parameter.name for parameter in extra}

    @functools.wraps(command)
    def extended(**kwargs: Any) -> None:
        # Typer passes every parameter of the signature; the plugin options' values
        # have already gone to the environment.
        command(**{name: value for name, value in kwargs.items() if name not in added})

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]
    extended.__signature__ = signature.replace(parameters=[*params, *extra])  # type: ignore[attr-defined]
    extended.__annotations__ = {p.name: p.annotation for p in [*params, *extra]}
    return extended


def _annotation(option: WorkerOption) -> Any:
    def export(value: Any) -> Any:
        if value is not None:
            os.environ[option.env] = str(value).lower() if option.kind is bool else str(value)
        return value

    help_text = f"{option.help} (sets {option.env}; from plugin {option.plugin})".lstrip()
    return Annotated[
        option.kind | None,
        typer.Option(
            option.flag,
            callback=export,
            expose_value=False,
            help=help_text,
            show_default=False,
        ),
    ]


def _flags(annotation: Any) -> list[str]:
    """The option names in a Typer ``Annotated[..., typer.Option(...)]`` annotation."""
    found = []
    for meta in getattr(annotation, "__metadata__", ()):
        # in ``Annotated``, Typer's first positional ("default") is an option name too
        decls = [getattr(meta, "default", None), *(getattr(meta, "param_decls", ()) or ())]
        found += [d for d in decls if isinstance(d, str) and d.startswith("-")]
    return found


def _name(info: Any) -> str:
    if getattr(info, "name", None):
        return str(info.name)
    callback = getattr(info, "callback", None) or getattr(info, "typer_instance", None)
    name = getattr(callback, "__name__", "")
    return name.lower().replace("_", "-")


def _command_names(cli: typer.Typer) -> set[str]:
    return {_name(info) for info in (*cli.registered_commands, *cli.registered_groups)}
