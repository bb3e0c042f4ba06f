"""Fixtures of the command-line tests: a clean environment for every test, and
``shared``, the test app on backends this process shares with the command line."""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

import pytest
from cli_support import TESTS_DIR


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Memory backends, wide plain output, the tests directory as the current directory,
    and no module or sys.path entry left behind by loading an APP."""
    for key in list(os.environ):
        if key.upper().startswith("BGCOOR_") or key in ("FORCE_COLOR", "TTY_COMPATIBLE"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("BGCOOR_BROKER_URL", "memory://")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "memory://")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.chdir(TESTS_DIR)
    monkeypatch.setattr(sys, "path", list(sys.path))
    modules = set(sys.modules)
    sys.modules.pop("cli_app", None)  # each test imports the app under its own settings
    yield
    for name in set(sys.modules) - modules:  # forget the app modules loaded, only them
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if origin.startswith((str(TESTS_DIR), tempfile.gettempdir())):
            del sys.modules[name]


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``cli_app`` on ``sharedmem://``: what the test puts in, ``--app cli_app`` sees."""
    monkeypatch.setenv("BGCOOR_BROKER_URL", "sharedmem://")
    monkeypatch.setenv("BGCOOR_STORAGE_URL", "sharedmem://")
    return importlib.import_module("cli_app")
