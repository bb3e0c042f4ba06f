"""``bgcoor plugins``."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from cli_support import (
    fails,
    ok,
    row,
)

from bgcoor_core import __version__

# -- plugins -----------------------------------------------------------------------


def test_plugins_lists_what_each_provides() -> None:
    out = ok("plugins")
    assert row(out, "memory")[:2] == ["bgcoor", __version__]
    assert "broker memory://" in row(out, "memory")[2]
    assert "serializer application/json" in out
    assert "no plugin failed to load" in out


def test_plugins_lists_a_broken_plugin_with_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[bgcoor]\nbroken = not_installed_plugin_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # as if `pip install broken-plugin`
    out = ok("plugins")
    assert row(out, "broken") == [
        "broken-plugin",
        "ModuleNotFoundError: No module named 'not_installed_plugin_xyz'",
    ]
    assert row(out, "memory")[0] == "bgcoor"  # the others still load
    # every other command refuses to run with it, in one line naming it
    assert fails("status").startswith(
        "error: plugin 'broken' from distribution 'broken-plugin' failed to load"
    )


def test_plugins_with_app_shows_its_plugins_and_tasks(shared: ModuleType) -> None:
    out = ok("plugins", "--app", "cli_app")
    assert "broker sharedmem://" in row(out, "cli-test-sharedmem")[-1]
    assert row(out, "add") == ["default", "0", "default", "-", "def add(x: int, y: int) -> int"]
    assert row(out, "greet") == [
        "mail",
        "0",
        "default",
        "-",
        "async def greet(name: str, punctuation: str = '!') -> dict[str, typing.Any]",
    ]
    assert row(out, "echo")[-1] == "Echo.run(payload)"  # a handler object
    assert row(out, "explode")[2] == "0"  # max retries
