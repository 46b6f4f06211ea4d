"""The documentation keeps up with the code: every command, error, public name and SQL
function it names exists, and each that exists is documented."""

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import skill_store
from skill_store import errors

ROOT = Path(__file__).parents[2]
DOCS = ROOT / "docs"
MIGRATIONS = ROOT / "migrations" / "versions"
DROPPED = {"memory_team_index_name", "memory_text_query", "memory_team_index_definition"}
"""Functions that a later migration dropped and none made again."""


def site_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("site_hooks", DOCS / "_hooks" / "site.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_is_a_front_door() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_the_cli_reference_has_every_command_with_its_help() -> None:
    hooks = site_hooks()
    reference = hooks.cli_reference()
    commands = hooks.commands()

    assert len(commands) > 20
    for words, command in commands:
        title = " ".join(["skill-store", *words])
        assert f"`{title}`" in reference, title
        assert (command.help or "").strip(), f"{title} has no help to document it"
    assert "<!-- cli-reference -->" in (DOCS / "reference" / "cli.md").read_text()


def test_every_error_is_in_the_error_table() -> None:
    table = (DOCS / "reference" / "errors.md").read_text(encoding="utf-8")

    for name in [*errors.__all__, "pydantic.ValidationError"]:
        assert f"| `{name}` |" in table, name


def test_every_public_name_is_in_the_api_reference() -> None:
    api = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: skill_store\.(\w+)$", api, re.MULTILINE))

    assert set(skill_store.__all__) <= documented
    assert documented - {"web"} <= set(skill_store.__all__)


def test_every_sql_function_the_docs_name_exists() -> None:
    migrations = "\n".join(path.read_text() for path in MIGRATIONS.glob("*.py"))
    made = set(re.findall(r"CREATE (?:OR REPLACE )?FUNCTION (\w+)", migrations)) - DROPPED
    pages = [DOCS / "reference" / "database.md", DOCS / "guide" / "operations.md"]
    named = {
        name
        for page in pages
        for name in re.findall(r"`(\w+)\(", page.read_text(encoding="utf-8"))
        if name.startswith(("memory_", "search_", "retrieve_", "reconstruct_", "update_memory"))
        or name in {"lexeme_query", "text_search_config"}
    }

    assert len(named) > 10
    assert named <= made, named - made
