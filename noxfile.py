"""Developer sessions: ``nox`` runs tests, lint, typecheck and docs_check; ``nox -l`` lists them."""

from __future__ import annotations

import shutil

import nox

nox.options.default_venv_backend = "uv" if shutil.which("uv") else "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs_check"]
PLUGINS = (
    *("-e", "plugins/bgcoor-redis", "-e", "plugins/bgcoor-postgres"),
    *("-e", "plugins/bgcoor-msgpack", "-e", "plugins/bgcoor-cbor"),
)
#: What the lint and typecheck sessions install besides the project (``.ci/run`` installs
#: the same into the test environment and runs both sessions there, ``--no-venv``).
LINT_TOOLS = ("ruff>=0.6",)
TYPECHECK_TOOLS = ("asyncpg-stubs>=0.29", "mypy>=1.11")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite; extra arguments go to pytest (``nox -s tests -- -k lease``)."""
    session.install(".[test]", *PLUGINS)
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff is the only linter and formatter."""
    session.install(*LINT_TOOLS)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` on the core package and on each backend plugin."""
    session.install(".[test]", *PLUGINS, *TYPECHECK_TOOLS)
    session.run("mypy", "--strict", "bgcoor_core")
    for package in (
        "plugins/bgcoor-redis/bgcoor_redis",
        "plugins/bgcoor-postgres/bgcoor_postgres",
        "plugins/bgcoor-msgpack/bgcoor_msgpack",
        "plugins/bgcoor-cbor/bgcoor_cbor",
    ):
        session.run("mypy", "--strict", package)


@nox.session
def docs_check(session: nox.Session) -> None:
    """The hook reference in docs/writing-plugins.md matches the hook spec docstrings."""
    session.install(".")
    session.run("python", "docs/gen_hooks.py", "--check")
