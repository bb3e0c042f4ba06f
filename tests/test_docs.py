"""The docs stay true: hook specs are documented, the hook reference is current, every hook
has a test, and every setting is documented."""

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


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c or "nox" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert any(line.startswith(test_command + " ||") or line == test_command for line in ci_lines)
