"""A task's failure as data, and the exception ``result()`` raises from it.

A :class:`Failure` is what a record keeps of the exception that failed a task: its type's
qualified name and module, its message (``str(exc)``, never the ``repr`` of its args),
the formatted traceback, and the chain of exceptions behind it (``raise ... from``, or
the one being handled when it was raised). It is plain data, so any process reads it
without importing the exception's class: the CLI, a dashboard, another service.

Everything is bounded, so a pathological exception (a megabyte message, a cycle of causes,
a chain hundreds long) cannot blow up the record: at most :data:`MAX_CAUSES` links,
messages clipped to :data:`MESSAGE_LIMIT` (each cause's to :data:`CAUSE_MESSAGE_LIMIT`),
names to :data:`NAME_LIMIT`, the traceback to :data:`TRACEBACK_LIMIT` (its start and its
end kept, with a note of what was cut). Text that UTF-8 cannot carry (lone surrogates, as
``surrogateescape`` makes) is backslash-escaped.

:func:`failed_error` turns a record back into an exception: a :class:`TaskFailedError`
that, when the original class can be found here, is also an instance of that class (see
:func:`failed_error` for the policy).
"""

from __future__ import annotations

import keyword
import sys
import traceback as _traceback
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ._errors import TaskFailedError, failed_message

if TYPE_CHECKING:
    from ._task import Task

#: The most links of a cause chain a failure keeps.
MAX_CAUSES = 10
#: The longest message kept (in characters); a longer one is clipped with a note.
MESSAGE_LIMIT = 4096
#: The longest message kept of each cause.
CAUSE_MESSAGE_LIMIT = 1024
#: The longest type or module name kept.
NAME_LIMIT = 256
#: The longest traceback kept: its first :data:`_TRACEBACK_HEAD` characters and its end.
TRACEBACK_LIMIT = 32768
_TRACEBACK_HEAD = 4096
#: The attribute that carries a failure described elsewhere (a child process) on the
#: exception rebuilt from it; :meth:`Failure.of` returns it as it is.
CARRIED = "_bgcoor_failure"


class FailureCause(BaseModel):
    """One link of a failure's chain: the exception behind the one before it."""

    model_config = ConfigDict(frozen=True, extra="allow")

    #: The class's qualified name (``KeyError``, ``Client.Refused``).
    type: str
    #: The module the class is defined in (``builtins`` for the built-in ones).
    module: str = ""
    message: str = ""
    #: True when it was being handled as the next one was raised (``__context__``),
    #: False for an explicit ``raise ... from`` (``__cause__``).
    implicit: bool = False

    @property
    def qualified(self) -> str:
        """``module.type``, or the type alone for a built-in one (``KeyError``)."""
        return _qualified(self.module, self.type)


class Failure(BaseModel):
    """What failed a task, readable without its exception's class."""

    model_config = ConfigDict(frozen=True, extra="allow")

    #: The class's qualified name (``ValueError``, ``Client.Refused``).
    type: str
    #: The module the class is defined in (``builtins`` for the built-in ones).
    module: str = ""
    #: ``str(exc)``, clipped to :data:`MESSAGE_LIMIT`.
    message: str = ""
    #: The formatted traceback (causes included), clipped to :data:`TRACEBACK_LIMIT`.
    traceback: str = ""
    #: The exceptions behind it, nearest first: each one's ``__cause__``, or its
    #: ``__context__`` when it has no explicit cause and does not suppress it. A cycle
    #: ends the chain where it comes round.
    causes: list[FailureCause] = []
    #: True when the chain was longer than :data:`MAX_CAUSES` and its end was left off.
    causes_clipped: bool = False

    @classmethod
    def of(cls, exc: BaseException, traceback: str | None = None) -> Failure:
        """The failure ``exc`` describes; ``traceback``: its formatted traceback, when the
        caller has it already. Never raises for any exception, however broken."""
        carried = _carried(exc)
        if carried is not None:
            return carried
        if traceback is None:
            traceback = format_traceback(exc)
        kind, module = _names(exc)
        causes, clipped = _chain(exc)
        return cls(
            type=kind,
            module=module,
            message=clip(message_of(exc), MESSAGE_LIMIT),
            traceback=clip_traceback(traceback),
            causes=causes,
            causes_clipped=clipped,
        )

    @property
    def qualified(self) -> str:
        """``module.type``, or the type alone for a built-in one (``ValueError``)."""
        return _qualified(self.module, self.type)

    def outline(self) -> dict[str, Any]:
        """The failure without its traceback, as JSON-ready data (what a workflow member
        gets in a failed parent's marker)."""
        return self.model_dump(mode="json", exclude={"traceback"})


def _qualified(module: str, kind: str) -> str:
    return kind if module in ("", "builtins") else f"{module}.{kind}"


def format_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as text (its chain included); a placeholder if that fails."""
    try:
        return "".join(_traceback.format_exception(exc))
    except Exception:  # an exception whose chain cannot even be formatted
        return f"{_names(exc)[0]}: (the traceback could not be formatted)\n"


def utf8_safe(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (lone surrogates) backslash-escaped, so a
    record holding it can be written as JSON; other text is returned as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def clip(text: str, limit: int) -> str:
    """``text`` (made UTF-8 safe) of at most ``limit`` characters, plus a note of how
    many more there were."""
    text = utf8_safe(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def clip_traceback(text: str) -> str:
    """A traceback of at most :data:`TRACEBACK_LIMIT` characters (and a note): its
    start (the outermost frames) and its end (the innermost frames and the exception)."""
    text = utf8_safe(text)
    if len(text) <= TRACEBACK_LIMIT:
        return text
    tail = TRACEBACK_LIMIT - _TRACEBACK_HEAD
    cut = len(text) - TRACEBACK_LIMIT
    return f"{text[:_TRACEBACK_HEAD]}\n... [{cut} characters clipped] ...\n{text[-tail:]}"


def _carried(exc: BaseException) -> Failure | None:
    try:
        carried = getattr(exc, CARRIED, None)
    except Exception:  # a class whose __getattr__ raises something else
        return None
    return carried if isinstance(carried, Failure) else None


def _names(exc: BaseException) -> tuple[str, str]:
    """The qualified name and module of ``exc``'s class (a :class:`TaskFailedError`'s
    for one :func:`failed_error` built)."""
    kind: type[BaseException] = type(exc)
    if kind in _DUAL_CLASSES:
        kind = TaskFailedError
    name = getattr(kind, "__qualname__", None)
    module = getattr(kind, "__module__", None)
    return (
        clip(name if isinstance(name, str) else kind.__name__, NAME_LIMIT),
        clip(module if isinstance(module, str) else "", NAME_LIMIT),
    )


def message_of(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:
        return "<str() of the exception failed>"


def _chain(exc: BaseException) -> tuple[list[FailureCause], bool]:
    """``exc``'s chain as causes, at most :data:`MAX_CAUSES` (and whether more were left
    off). A :class:`TaskFailedError` carrying a failure (a task awaited another's
    result) has that failure and its causes behind it."""
    links: list[FailureCause] = []
    clipped = False
    seen = {id(exc)}
    current: BaseException | None = exc
    while current is not None and len(links) <= MAX_CAUSES:
        inner = getattr(current, "failure", None) if isinstance(current, TaskFailedError) else None
        if isinstance(inner, Failure):
            message = clip(inner.message, CAUSE_MESSAGE_LIMIT)
            links.append(FailureCause(type=inner.type, module=inner.module, message=message))
            links.extend(inner.causes)
            clipped = clipped or inner.causes_clipped
        current, implicit = _next(current)
        if current is None or id(current) in seen:
            break
        seen.add(id(current))
        links.append(_cause(current, implicit))
    if len(links) > MAX_CAUSES:
        return links[:MAX_CAUSES], True
    return links, clipped


def _next(exc: BaseException) -> tuple[BaseException | None, bool]:
    """The exception behind ``exc`` as tracebacks show it, and whether it is implicit."""
    if exc.__cause__ is not None:
        return exc.__cause__, False
    if exc.__context__ is not None and not exc.__suppress_context__:
        return exc.__context__, True
    return None, False


def _cause(exc: BaseException, implicit: bool) -> FailureCause:
    kind, module = _names(exc)
    return FailureCause(
        type=kind,
        module=module,
        message=clip(message_of(exc), CAUSE_MESSAGE_LIMIT),
        implicit=implicit,
    )


# -- rebuilding ----------------------------------------------------------------------


def failed_error(task: Task) -> TaskFailedError:
    """The exception ``result()`` raises for ``task``, which did not succeed.

    A :class:`TaskFailedError` with the record's ``error``, ``traceback`` and ``failure``,
    and its usual message (``task ID ended failed: ValueError: ...``). When the record
    names an exception class found here that derives from :class:`Exception`, it is
    also an instance of that class (of a subclass of both, made once per class, built
    without calling the class's ``__init__``), so ``except ValueError`` and ``except
    TaskFailedError`` both catch it. Otherwise, and whenever anything about the class is
    odd, it is a plain :class:`TaskFailedError`.

    Finding the class never imports anything: only a module this process has imported
    already (in ``sys.modules``) is looked in, and only its own namespace (no module
    ``__getattr__``), so a record, which any producer may have written, cannot make this
    process run a module's code. A caller that awaits a task has usually imported the
    task's module, and with it the module of the exceptions the task raises.
    """
    failure = task.failure
    return rebuilt_error(task.id, task.status, task.error, task.traceback, failure)


def rebuilt_error(
    task_id: str,
    status: str,
    error: str | None,
    traceback: str | None,
    failure: Failure | None,
) -> TaskFailedError:
    """:func:`failed_error` from the record's fields (what such an exception unpickles
    with)."""
    dual = None if failure is None else _dual(failure)
    if dual is not None:
        made = _instance(dual, task_id, status, error, traceback, failure)
        if made is not None:
            return made
    return TaskFailedError(task_id, status, error, traceback, failure)


#: Each original class's subclass that is also a TaskFailedError; ``None``: it cannot
#: have one (its ``__init_subclass__`` refused, or its layout does not mix).
_DUALS: dict[type[Exception], type[TaskFailedError] | None] = {}
_DUAL_CLASSES: set[type[BaseException]] = set()


def _dual(failure: Failure) -> type[TaskFailedError] | None:
    original = _class_named(failure.module, failure.type)
    if original is None or issubclass(original, TaskFailedError):
        return None  # a TaskFailedError's is a plain one (its own subclasses included)
    if original in _DUALS:
        return _DUALS[original]
    made: type[TaskFailedError] | None
    try:
        made = type(
            original.__name__,
            (original, TaskFailedError),
            {
                "__module__": __name__,
                "__qualname__": original.__name__,
                "__doc__": f"A TaskFailedError that is also a {original.__qualname__}.",
                "__str__": BaseException.__str__,
                "__repr__": BaseException.__repr__,
                "__reduce__": _reduce,
            },
        )
    except Exception:
        made = None
    if made is not None:
        _DUAL_CLASSES.add(made)
    return _DUALS.setdefault(original, made)


def _class_named(module_name: str, qualname: str) -> type[Exception] | None:
    """The class ``qualname`` of the already imported ``module_name``, if it is an
    :class:`Exception` subclass known by exactly that name; else ``None``."""
    if not (_dotted(module_name) and _dotted(qualname)):
        return None
    found: object = sys.modules.get(module_name)
    for part in qualname.split("."):
        try:
            namespace = vars(found)
        except TypeError:
            return None
        found = namespace.get(part)
    if not (isinstance(found, type) and issubclass(found, Exception)):
        return None
    if found.__qualname__ != qualname or found.__module__ != module_name:
        return None  # a name bound to another class: not the one that was raised
    return found


def _dotted(name: str) -> bool:
    parts = name.split(".")
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def _instance(
    dual: type[TaskFailedError],
    task_id: str,
    status: str,
    error: str | None,
    traceback: str | None,
    failure: Failure | None,
) -> TaskFailedError | None:
    """An instance of ``dual`` made by its built-in base's ``__new__`` (no ``__init__``
    or ``__new__`` of the original class runs), with :class:`TaskFailedError`'s
    attributes and message; ``None`` if the class refuses that."""
    try:
        base = next(c for c in dual.__mro__ if not c.__flags__ & _HEAP_TYPE)
        made = base.__new__(dual)  # type: ignore[call-overload]
        made.args = (failed_message(task_id, status, error),)
        made.task_id, made.status, made.error = task_id, status, error
        made.traceback, made.failure = traceback, failure
    except Exception:
        return None
    return made if isinstance(made, TaskFailedError) else None


#: ``Py_TPFLAGS_HEAPTYPE``: a class made by a class statement (not a built-in one).
_HEAP_TYPE = 1 << 9


def _reduce(self: TaskFailedError) -> tuple[Any, ...]:
    """Pickled as its fields, rebuilt by :func:`rebuilt_error` (in another process, a
    plain TaskFailedError if the class is not found there)."""
    fields = (self.task_id, self.status, self.error, self.traceback, self.failure)
    return rebuilt_error, fields
