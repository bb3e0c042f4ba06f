"""The event loop a worker runs on (``BGCOOR_EVENT_LOOP``)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bgcoor_core import ConfigurationError
from bgcoor_core._loops import run
from bgcoor_core._settings import Settings


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_auto_and_uvloop_run_on_uvloop_when_it_is_installed() -> None:
    pytest.importorskip("uvloop", reason="the uvloop extra is not installed")
    assert run(loop_module(), "auto").startswith("uvloop")
    assert run(loop_module(), "uvloop").startswith("uvloop")


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    assert run(loop_module(), "asyncio").startswith("asyncio")


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert run(loop_module(), "auto").startswith("asyncio")
    with pytest.raises(ConfigurationError, match=r"uvloop is not installed.*bgcoor\[uvloop\]"):
        run(loop_module(), "uvloop")


def test_the_setting_names_its_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BGCOOR_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
    monkeypatch.setenv("BGCOOR_EVENT_LOOP", "asyncio")
    assert Settings().event_loop == "asyncio"
