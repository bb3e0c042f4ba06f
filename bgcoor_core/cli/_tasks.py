"""``bgcoor enqueue APP TASK`` and ``bgcoor inspect ID``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from .. import _limits as limits
from .._codec import Codec
from .._errors import DecodeError, ResultTimeoutError, TaskCancelledError, TaskFailedError
from .._failures import Failure
from .._handlers import FunctionHandler
from .._manager import TaskManager
from .._options import options as declared_options
from .._task import Task, TaskStatus
from .._task_registry import RegisteredTask
from .._values import Opaque, UnrepresentableError, pack
from .._workflows import NODE_HEADER, WORKFLOW_HEADER
from ._app_loading import run_with_manager
from ._options import AppArgument, AppOption, check_queue, check_task_id, in_range
from ._output import (
    CliError,
    cell,
    clean,
    clean_json,
    err_console,
    json_text,
    out_console,
    timestamp,
)

STATUS_STYLES = {
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "red",
    TaskStatus.DEAD: "bold red",
    TaskStatus.RETRYING: "yellow",
    TaskStatus.RUNNING: "cyan",
    TaskStatus.CANCELLED: "magenta",
}


def parse_json(value: str | None, option: str, expected: type) -> Any:
    """The JSON in ``option``, checked to be a ``list``/``dict`` (or any value for ``object``).

    Missing: an empty ``expected``. Malformed or of the wrong kind: a usage error (exit 2).
    """
    if value is None:
        return expected()
    examples = {list: "--args '[1, \"two\"]'", dict: '--kwargs \'{"name": "x"}\''}
    example = f"; e.g. {examples[expected]}" if expected in examples else ""
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{option} is not valid JSON ({exc.msg} at column {exc.colno}){example}",
            exit_code=2,
        ) from None
    if not isinstance(data, expected):
        wanted = "list" if expected is list else "object"
        raise CliError(
            f"{option} must be a JSON {wanted}, got {_json_kind(data)}{example}",
            exit_code=2,
        )
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


_NO_PAYLOAD = object()  # --payload not given (null is a valid payload)


@dataclass(frozen=True, slots=True)
class _Call:
    """What the command line says to call the task with."""

    args: list[Any]
    kwargs: dict[str, Any]
    payload: Any


def enqueue(
    app: AppArgument,
    task: Annotated[
        str,
        typer.Argument(
            metavar="TASK",
            help="Registered task name; a short one ('add') finds the only task ending in it "
            "('jobs.add').",
        ),
    ],
    args: Annotated[
        str | None,
        typer.Option("--args", metavar="JSON", help="Positional arguments as a JSON list."),
    ] = None,
    kwargs: Annotated[
        str | None,
        typer.Option("--kwargs", metavar="JSON", help="Keyword arguments as a JSON object."),
    ] = None,
    payload: Annotated[
        str | None,
        typer.Option(
            "--payload",
            metavar="JSON",
            help="Raw payload, for tasks that are handler objects rather than functions.",
        ),
    ] = None,
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            "-q",
            callback=check_queue,
            help="Queue (default: the task's).",
            show_default=False,
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority",
            "-p",
            callback=in_range(limits.PRIORITY),
            help=f"Priority, {limits.PRIORITY.describe()} (default: the task's).",
            show_default=False,
        ),
    ] = None,
    delay: Annotated[
        float | None,
        typer.Option(
            "--delay",
            "-d",
            callback=in_range(limits.DELAY),
            help=f"Run no earlier than SECONDS from now ({limits.DELAY.describe()}).",
        ),
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            "-o",
            metavar="NAME=VALUE",
            help="Any other call option, as declared for .options() ("
            + ", ".join(sorted(set(declared_options("call")) - _FLAGGED))
            + "); VALUE is JSON, or text. Repeat for more.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Wait for the task and print its result as JSON.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            "-t",
            callback=in_range(limits.WAIT),
            help=f"With --wait: give up after SECONDS ({limits.WAIT.describe()}).",
        ),
    ] = None,
) -> None:
    """Enqueue TASK from APP and print its id; with --wait, also its result.

    Arguments are checked against the task's signature before anything is enqueued.
    """
    if timeout is not None and not wait:
        raise CliError("--timeout only applies with --wait", exit_code=2)
    call = _Call(
        args=parse_json(args, "--args", list),
        kwargs=parse_json(kwargs, "--kwargs", dict),
        payload=parse_json(payload, "--payload", object) if payload is not None else _NO_PAYLOAD,
    )

    options = {"queue": queue, "priority": priority, "delay": delay or None}
    options.update(_call_options(option or []))

    async def body(manager: TaskManager) -> None:
        built = _build(manager, _registered(manager, task), call, options)
        handle = await manager.submit(built)
        typer.echo(clean(handle.id))
        if wait:
            waiting = cell(f"waiting for {built.name} ({handle.id})")
            with err_console().status(waiting, spinner="dots"):
                result = await _wait(handle.result(timeout=timeout), handle.id, built.queue)
            typer.echo(json_text(result))

    run_with_manager(app, body)


def _registered(manager: TaskManager, name: str) -> RegisteredTask:
    """The task ``name`` means: registered as it, or the only one whose name ends in
    ``.name`` (``add`` for ``jobs.add``); else an error suggesting close names."""
    manager.host  # noqa: B018 - plugins contribute their tasks when the host is built
    return manager.registry.resolve(name)


#: Call options that have flags of their own.
_FLAGGED = frozenset({"queue", "priority", "delay"})


def _call_options(given: list[str]) -> dict[str, Any]:
    """``--option name=value`` pairs; the values are checked, with the names, against the
    one declaration of call options when the task is built (``CallOptions``)."""
    found: dict[str, Any] = {}
    for item in given:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise CliError(f"--option {item!r}: use NAME=VALUE, e.g. expires=60", exit_code=2)
        try:
            found[name.strip()] = json.loads(text)
        except ValueError:
            found[name.strip()] = text  # plain text: a queue name, an ISO date
    return found


def _build(
    manager: TaskManager, entry: RegisteredTask, call: _Call, options: dict[str, Any]
) -> Task:
    """Arguments and options are checked here, in the caller, by the manager's own task
    builder (the options against their one declaration)."""
    if isinstance(entry.handler, FunctionHandler):
        if call.payload is not _NO_PAYLOAD:
            raise CliError(
                f"task {entry.name!r} is a function: pass --args/--kwargs, not --payload",
                exit_code=2,
            )
        return manager.build_task(entry, call.args, call.kwargs, **options)
    if call.args or call.kwargs:
        raise CliError(
            f"task {entry.name!r} is a handler object that takes a raw payload: "
            "pass --payload JSON, not --args/--kwargs",
            exit_code=2,
        )
    payload = None if call.payload is _NO_PAYLOAD else call.payload
    return manager.build_task(entry, [payload], **options)


async def _wait(result: Any, task_id: str, queue: str) -> Any:
    try:
        return await result
    except TaskFailedError as exc:
        raise CliError(f"{exc} (details: bgcoor inspect {task_id})") from exc
    except TaskCancelledError as exc:
        raise CliError(str(exc)) from exc
    except ResultTimeoutError as exc:
        raise CliError(f"{exc}; is a worker serving queue {queue!r}?") from exc


def inspect(
    task_id: Annotated[str, typer.Argument(metavar="ID", help="Task id.", callback=check_task_id)],
    app: AppOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole record as JSON.")
    ] = False,
) -> None:
    """Show one task: status, attempts, timestamps, error (type, module, message, causes)
    with traceback, result."""

    async def body(manager: TaskManager) -> tuple[Task, Codec]:
        return await manager.get(task_id), manager.broker.codec

    record, codec = run_with_manager(app, body)
    if as_json:
        typer.echo(clean_json(_record_json(record, codec)))
        return
    console = out_console()
    console.print(_describe(record, codec))
    shown = record.traceback or (record.failure.traceback if record.failure else None)
    if shown:
        console.print(Text("traceback", style="bold"))
        console.print(Text(clean(shown.rstrip(), multiline=True)), soft_wrap=True)


def _describe(task: Task, codec: Codec | None = None) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("id", cell(task.id))
    grid.add_row("name", cell(task.name))
    grid.add_row("status", Text(task.status.value, STATUS_STYLES.get(task.status, "")))
    grid.add_row("queue", cell(task.queue))
    grid.add_row("priority", str(task.priority))
    grid.add_row("attempts", f"{task.attempts} (max retries {task.max_retries})")
    grid.add_row("created", timestamp(task.created_at))
    if task.eta is not None:
        grid.add_row("eta", timestamp(task.eta))
    grid.add_row("started", timestamp(task.started_at))
    grid.add_row("finished", timestamp(task.finished_at))
    if task.timeout is not None:
        grid.add_row("timeout", f"{task.timeout:g}s")
    grid.add_row("payload", _shown(task.payload, codec, result=False))
    if WORKFLOW_HEADER in task.headers:
        node = task.headers.get(NODE_HEADER, "?")
        grid.add_row("workflow", cell(f"{task.headers[WORKFLOW_HEADER]} (node {node})"))
    if task.headers:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(task.headers.items()))
        grid.add_row("headers", cell(shown))
    if task.status is TaskStatus.SUCCEEDED:
        grid.add_row("result", _shown(task.result, codec, result=True))
    if task.error:
        grid.add_row("error", cell(task.error, "red"))
    if task.failure is not None:
        _add_failure(grid, task.failure)
    return grid


def _add_failure(grid: Table, failure: Failure) -> None:
    """The structured failure, as the record has it (its class is never imported): type,
    module, message, and each exception behind it."""
    grid.add_row("type", cell(failure.type))
    grid.add_row("module", cell(failure.module or "-"))
    grid.add_row("message", Text(clean(failure.message, multiline=True)))
    for link in failure.causes:
        label = "while handling" if link.implicit else "caused by"
        grid.add_row(label, Text(clean(f"{link.qualified}: {link.message}", multiline=True)))
    if failure.causes_clipped:
        grid.add_row("", cell("(further causes not kept)"))


# -- sealed values (payload codecs, pickle) --------------------------------------------


def _opened(value: Opaque, codec: Codec, *, result: bool) -> Any:
    """A sealed value's content, as the worker would open it; ``DecodeError`` if not."""
    return codec.open_result(value) if result else codec.open(value)


def _shown(value: Any, codec: Codec | None, *, result: bool) -> Text:
    """A payload or result as JSON text; a sealed one opened when this process can (its
    keys, its accepted types), else described: ``encrypted (key k2)``, the value's size."""
    if type(value) is Opaque and codec is not None:
        try:
            value = _opened(value, codec, result=result)
        except DecodeError as exc:
            return cell(f"{_label(value)}, not opened: {exc}", "yellow")
    return Text(json_text(value))


def _label(value: Opaque) -> str:
    keys = [
        spec[len("aesgcm:") :] for spec in value.codecs.split(",") if spec.startswith("aesgcm:")
    ]
    return f"encrypted (key {keys[-1]})" if keys else repr(value)


def _record_json(record: Task, codec: Codec) -> str:
    """The record as JSON; a sealed payload or result opened when it can be (and then
    tagged like any value), else ``{"$type": "sealed", "value": {...}}`` describing it."""
    if type(record.payload) is not Opaque and type(record.result) is not Opaque:
        return record.model_dump_json(indent=2)
    data = json.loads(record.model_dump_json())
    for name, result in (("payload", False), ("result", True)):
        value = getattr(record, name)
        if type(value) is Opaque:
            data[name] = _json_value(value, codec, result=result)
    return json.dumps(data, indent=2, ensure_ascii=False)


def _json_value(value: Opaque, codec: Codec, *, result: bool) -> Any:
    try:
        opened = _opened(value, codec, result=result)
    except DecodeError as exc:
        return {
            "$type": "sealed",
            "value": {
                "content_type": value.content_type,
                "codecs": value.codecs,
                "bytes": len(value.data),
                "shown": _label(value),
                "not_opened": str(exc),
            },
        }
    try:
        return pack(opened)
    except UnrepresentableError:  # an object only pickle carries: the tag as stored
        return pack(value)
