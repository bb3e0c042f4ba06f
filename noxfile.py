"""Developer sessions: ``nox`` runs tests, lint and typecheck; ``nox -s docs_check`` too."""

from __future__ import annotations

import shutil

import nox

nox.options.default_venv_backend = "uv" if shutil.which("uv") else "venv"
nox.options.sessions = ["tests", "lint", "typecheck", "docs_check"]
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite; extra arguments go to pytest (``nox -s tests -- -k lease``)."""
    session.install(".[test]")
    session.run("pytest", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff is the only linter and formatter."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """``mypy --strict`` on the core package."""
    session.install(".[test]", "mypy>=1.11")
    session.run("mypy", "--strict", "bgcoor_core")


@nox.session(python=PYTHON)
def docs_check(session: nox.Session) -> None:
    """The hook reference in docs/writing-plugins.md matches the hook spec docstrings."""
    session.install(".")
    session.run("python", "docs/gen_hooks.py", "--check")
