"""What plugins add to the command line: ``bgcoor_register_commands`` (subcommands) and
``bgcoor_register_worker_options`` (``bgcoor worker`` options exported to the environment
before the app loads), loaded leniently so a broken plugin never breaks ``bgcoor --help``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from cli_support import Subprocess, write_module

import bgcoor_core.cli as cli_module
from bgcoor_core import PluginError, WorkerOptionRegistry, hookimpl
from bgcoor_core._plugins import build_plugin_host
from bgcoor_core.cli import main

PLUGIN_SOURCE = '''
import typer
from bgcoor_core import hookimpl


@hookimpl
def bgcoor_register_commands(cli: typer.Typer) -> None:
    @cli.command("hello")
    def hello(who: str = typer.Option("world", "--who")) -> None:
        """Say hello (a plugin's command)."""
        typer.echo(f"hello, {who}")


@hookimpl
def bgcoor_register_worker_options(options) -> None:
    options.add("--metrics-port", env="BGCOOR_METRICS_PORT", type=int, help="Metrics port.")
'''

#: An app that records, when imported, what the plugin's settings would read.
APP_SOURCE = """
import os
from bgcoor_core import TaskManager

SEEN_PORT = os.environ.get("BGCOOR_METRICS_PORT")
print(f"app sees metrics port {SEEN_PORT}", flush=True)
manager = TaskManager()
"""


class Metrics:
    """A plugin adding a command and a ``bgcoor worker`` option."""

    __name__ = "metrics-plugin"

    @hookimpl
    def bgcoor_register_commands(self, cli: typer.Typer) -> None:
        @cli.command("metrics")
        def metrics(port: int = typer.Option(9100, "--port")) -> None:
            """Show the metrics endpoint."""
            typer.echo(f"metrics on :{port}")

        @cli.command("status")  # a core command's name: refused with a warning
        def status() -> None:
            typer.echo("hijacked")

    @hookimpl
    def bgcoor_register_worker_options(self, options: WorkerOptionRegistry) -> None:
        options.add(
            "--metrics-port", env="BGCOOR_METRICS_PORT", type=int, help="Serve metrics here."
        )
        options.add("--metrics-verbose", env="BGCOOR_METRICS_VERBOSE", type=bool)


class Broken:
    __name__ = "broken-commands"

    @hookimpl
    def bgcoor_register_commands(self, cli: typer.Typer) -> None:
        raise RuntimeError("cannot build my command")


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def with_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main`` builds its plugin host from these plugins instead of the entry points."""
    host = build_plugin_host(plugins=[Metrics(), Broken()], load_entry_points=False)
    monkeypatch.setattr(cli_module, "load_plugin_host", lambda: host)
    for variable in ("BGCOOR_METRICS_PORT", "BGCOOR_METRICS_VERBOSE"):
        monkeypatch.setenv(variable, "unset")  # recorded, so the export below is undone
        monkeypatch.delenv(variable)


def test_plugin_command_runs_and_a_broken_plugin_only_warns(
    with_plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "metrics", "--port", "9200")
    assert (code, out) == (0, "metrics on :9200\n")
    assert "warning: plugin commands: plugin 'broken-commands' failed in " in err
    assert "RuntimeError: cannot build my command" in err
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert "metrics" in out
    assert "worker" in out


def test_plugin_command_cannot_replace_a_core_command(
    with_plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_main(capsys, "status")
    assert code == 0
    assert "hijacked" not in out
    assert "Tasks by status" in out
    assert "a plugin's command 'status' is not added: bgcoor has its own" in err


def test_worker_option_is_exported_before_the_app_loads(
    with_plugins: None,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    name = write_module(tmp_path, "metrics_app", APP_SOURCE)
    code, out, _ = run_main(capsys, "worker", name, "--burst", "--metrics-port", "9101")
    assert code == 0, out
    assert "app sees metrics port 9101" in out
    assert sys.modules[name].SEEN_PORT == "9101"
    assert "worker stopped after 0 task(s)" in out  # --burst: nothing to do, exit 0
    run_main(capsys, "worker", name, "--burst", "--metrics-verbose")
    assert os.environ["BGCOOR_METRICS_VERBOSE"] == "true"


def test_worker_help_lists_plugin_options(
    with_plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main(capsys, "worker", "--help")
    assert code == 0
    assert "--metrics-port" in out
    assert "BGCOOR_METRICS_PORT" in out
    code, _, err = run_main(capsys, "worker", "cli_app", "--metrics-port", "x")
    assert code == 2
    assert "'--metrics-port'" in err  # typed: not an integer


def test_host_facade_collects_worker_options() -> None:
    host = build_plugin_host(plugins=[Metrics()], load_entry_points=False)
    options = host.worker_options().options
    assert list(options) == ["--metrics-port", "--metrics-verbose"]
    port = options["--metrics-port"]
    assert (port.env, port.kind, port.plugin) == ("BGCOOR_METRICS_PORT", int, "metrics-plugin")


def test_core_app_has_no_plugin_additions() -> None:
    """``bgcoor_core.cli.app`` (what the docs are checked against) is the core alone."""
    command = typer.main.get_command(cli_module.app)
    assert "metrics" not in getattr(command, "commands", {})


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("metrics-port",), "use a long option in lower case"),
        (("--Metrics",), "use a long option in lower case"),
        (("--port", "lower_case"), "is not an upper-case variable name"),
    ],
)
def test_worker_option_registry_refuses_bad_declarations(
    args: tuple[str, ...], expected: str
) -> None:
    registry = WorkerOptionRegistry()
    flag, env = (*args, "BGCOOR_X")[:2]
    with pytest.raises(PluginError, match=expected):
        registry.add(flag, env=env)


def test_worker_option_registry_refuses_types_and_duplicates() -> None:
    registry = WorkerOptionRegistry()
    with pytest.raises(PluginError, match="type must be one of str, int, float, bool"):
        registry.add("--when", env="WHEN", type=list)
    registry.add("--port", env="PORT", type=int)
    with pytest.raises(PluginError, match="'--port' is added twice"):
        registry.add("--port", env="OTHER")


def test_worker_option_taken_by_the_core_is_not_added(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class Clash:
        __name__ = "clash"

        @hookimpl
        def bgcoor_register_worker_options(self, options: WorkerOptionRegistry) -> None:
            options.add("--concurrency", env="CLASH_CONCURRENCY", type=int)

    host = build_plugin_host(plugins=[Clash()], load_entry_points=False)
    monkeypatch.setattr(cli_module, "load_plugin_host", lambda: host)
    code, out, err = run_main(capsys, "worker", "--help")
    assert code == 0
    assert "worker option --concurrency of plugin 'clash' is not added: taken" in err
    assert "CLASH_CONCURRENCY" not in out


def install_entry_point(directory: Path, name: str, module: str) -> None:
    """As if ``pip install`` put a distribution with a ``bgcoor`` entry point there."""
    dist = directory / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[bgcoor]\n{name} = {module}\n")


def test_installed_plugin_adds_commands_and_a_broken_one_spares_help(tmp_path: Path) -> None:
    write_module(tmp_path, "hello_plugin", PLUGIN_SOURCE)
    write_module(tmp_path, "metrics_app", APP_SOURCE)
    install_entry_point(tmp_path, "hello", "hello_plugin")
    install_entry_point(tmp_path, "broken", "not_installed_plugin_xyz")
    env: dict[str, Any] = {"PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    code, out, err = Subprocess("--help", cwd=tmp_path, env=env).finish()
    assert code == 0, err
    assert "hello" in out
    code, out, err = Subprocess("hello", "--who", "ada", cwd=tmp_path, env=env).finish()
    assert (code, out) == (0, "hello, ada\n"), err
    code, out, err = Subprocess(
        "worker", "metrics_app", "--burst", "--metrics-port", "9102", cwd=tmp_path, env=env
    ).finish()
    # the broken plugin: the worker, which builds the app's plugins strictly, names it
    assert code == 1
    assert "plugin 'broken' from distribution 'broken' failed to load" in err
    assert "app sees metrics port 9102" in out  # exported before the app was imported
