"""The docs stay true: hook specs are documented, the hook reference is current, every hook
has a test, every setting and every command-line option is documented, links resolve, and
the README's commands are the ones CI and new users run."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bgcoor_core import Settings
from bgcoor_core.hookspecs import PROJECT

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"


def load_gen_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_hooks", DOCS / "gen_hooks.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_hooks", module)
    spec.loader.exec_module(module)
    return module


gen_hooks = load_gen_hooks()
SPECS = gen_hooks.hook_specs()
SPEC_IDS = [fn.__name__ for fn in SPECS]


def test_specs_are_found() -> None:
    assert "bgcoor_register_brokers" in SPEC_IDS
    assert all(hasattr(fn, f"{PROJECT}_spec") for fn in SPECS)


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_hookspec_is_documented(spec: Callable[..., Any]) -> None:
    name = spec.__name__
    doc = inspect.getdoc(spec)
    assert doc, f"{name} has no docstring"
    prose, params = gen_hooks.split_docstring(doc)
    assert prose, f"{name}: docstring has only :param: lines"
    expected = list(inspect.signature(spec).parameters)
    missing = [param for param in expected if not params.get(param)]
    assert not missing, f"{name}: no :param: for {missing}"
    unknown = sorted(set(params) - set(expected))
    assert not unknown, f"{name}: :param: for unknown {unknown}"


def test_hook_reference_is_current() -> None:
    page = (DOCS / "writing-plugins.md").read_text()
    assert gen_hooks.replace_block(page, gen_hooks.render()) == page, (
        "docs/writing-plugins.md hook reference is out of date: run python docs/gen_hooks.py"
    )


def _test_sources() -> str:
    own = Path(__file__).resolve()
    return "\n".join(p.read_text() for p in sorted(TESTS.rglob("*.py")) if p.resolve() != own)


@pytest.mark.parametrize("name", SPEC_IDS)
def test_hook_has_a_test(name: str) -> None:
    assert re.search(rf"\b{name}\b", _test_sources()), f"no test under tests/ mentions {name}"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_setting_is_documented(field: str) -> None:
    page = (DOCS / "configuration.md").read_text()
    variable = f"BGCOOR_{field.upper()}"
    assert f"`{variable}`" in page, f"docs/configuration.md lacks {variable}"


def test_configuration_documents_no_stale_setting() -> None:
    page = (DOCS / "configuration.md").read_text()
    known = {f"BGCOOR_{f.upper()}" for f in Settings.model_fields}
    stale = set(re.findall(r"`(BGCOOR_[A-Z_]+)`", page)) - known
    assert not stale, f"docs/configuration.md documents unknown settings {sorted(stale)}"


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_relative_links_resolve(page: str) -> None:
    path = ROOT / page
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    broken = [t for t in targets if "://" not in t and not (path.parent / t).exists()]
    assert not broken, f"{page} links to missing files: {broken}"


def _anchors(path: Path) -> set[str]:
    """GitHub's ids for the headings of a Markdown page (lower case, punctuation dropped)."""
    headings = re.findall(r"^#{1,6} +(.+?) *$", path.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", ["README.md", *(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_anchor_links_resolve(page: str) -> None:
    path = ROOT / page
    broken = []
    for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", path.read_text()):
        linked = path.parent / target if target else path
        if "://" in target or linked.suffix != ".md" or not linked.is_file():
            continue  # not a page of ours (a missing file fails test_relative_links_resolve)
        if anchor not in _anchors(linked):
            broken.append(f"{target}#{anchor}")
    assert not broken, f"{page} links to missing headings: {broken}"


def _cli_commands() -> list[tuple[list[str], list[str]]]:
    """Every ``bgcoor`` command as (words after ``bgcoor``, its long options)."""
    import typer

    from bgcoor_core.cli import app

    found: list[tuple[list[str], list[str]]] = []

    def walk(command: Any, words: list[str]) -> None:
        options = [o for p in command.params for o in p.opts if o.startswith("--")]
        found.append((words, options))
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*words, name])

    walk(typer.main.get_command(app), [])
    return found


CLI_COMMANDS = _cli_commands()


@pytest.mark.parametrize(
    ("words", "options"), CLI_COMMANDS, ids=[" ".join(w) or "bgcoor" for w, _ in CLI_COMMANDS]
)
def test_cli_command_and_options_are_documented(words: list[str], options: list[str]) -> None:
    page = (DOCS / "cli.md").read_text()
    section = page
    if words:
        heading = f"\n## {words[0]}\n"
        assert heading in page, f"docs/cli.md has no section '## {words[0]}'"
        section = page.split(heading, 1)[1].split("\n## ", 1)[0]
        assert f"bgcoor {' '.join(words)}" in section, f"docs/cli.md lacks 'bgcoor {words}'"
    missing = [o for o in options if o not in section]
    assert not missing, f"docs/cli.md does not document {missing} of bgcoor {' '.join(words)}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c or "nox" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert any(line.startswith(test_command + " ||") or line == test_command for line in ci_lines)


def test_readme_first_command_installs_and_runs_the_demo() -> None:
    readme = (ROOT / "README.md").read_text()
    first = re.findall(r"```bash\n(.+)\n```", readme)[0]
    assert first == "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/bgcoor demo"
