"""The repository stands alone: no file reaches outside it, and every relative link in the docs
resolves to a file in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".venv", ".git", "var", "node_modules", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis"}


def _files(*suffixes: str) -> list[Path]:
    found = []
    for path in ROOT.rglob("*"):
        if any(part in SKIP for part in path.relative_to(ROOT).parts):
            continue
        if path.is_file() and (path.suffix in suffixes or path.name in suffixes):
            found.append(path)
    return found


def test_nothing_reaches_outside_the_repository() -> None:
    sources = _files(".py", ".md", ".sh", ".yaml", ".yml", ".json", ".toml", "Makefile", "run", "Dockerfile")
    assert len(sources) > 50
    # ../shared is the team's reference folder beside the clone: never part of the product.
    offenders = [str(p.relative_to(ROOT)) for p in sources if "../shared" in p.read_text(errors="replace")]
    offenders = [name for name in offenders if name != "tests/unit/test_repository.py"]
    assert offenders == []


def test_every_relative_link_in_the_docs_resolves() -> None:
    broken = []
    for doc in _files(".md"):
        if "deploy/kafka/lib" in str(doc):
            continue
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).resolve().exists():
                broken.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert broken == []


def test_every_setting_is_documented_by_its_variable_name() -> None:
    from pydantic import AliasChoices

    from streams.settings import Settings

    documented = (ROOT / "docs" / "configuration.md").read_text()
    missing = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variable = alias.choices[0] if isinstance(alias, AliasChoices) else f"WAGATE_{name.upper()}"
        if f"`{variable}`" not in documented:
            missing.append(variable)
    assert missing == []


def test_the_examples_need_only_what_their_docs_and_the_examples_extra_install() -> None:
    import ast
    import sys
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "examples"
    ]
    installed = {re.split(r"[<>=!~\[ ]", requirement)[0].replace("-", "_") for requirement in extra}
    for path in sorted((ROOT / "examples").glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        modules |= {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
        }
        third_party = {m for m in modules if m not in sys.stdlib_module_names and m != "__future__"}
        assert third_party <= installed, (
            f"{path.name} imports {third_party - installed}, not in the examples extra"
        )
        docstring = ast.get_docstring(tree) or ""
        assert all(f"pip install {name.replace('_', '-')}" in docstring for name in third_party), path.name
