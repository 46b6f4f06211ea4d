"""An application's own tables and migrations beside the package's, in one database.

A scratch application, made by the real `alembic init -t async` and edited as
docs/guide/own-tables.md shows (its blocks are the application's files), autogenerates,
upgrades and checks its history; the package's checks and upgrade still find nothing to do.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from skill_store.database import latest_revision

from ..support import migrated_database

GUIDE = Path(__file__).parents[2] / "docs" / "guide" / "own-tables.md"
SKILL_STORE = Path(sys.executable).with_name("skill-store")
APPLICATION_FILE = re.compile(r"^```python (\S+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
CONFIGURE_ARGUMENTS = ("include_object=alembic_include_object", "version_table=VERSION_TABLE")


def guide_files() -> dict[str, list[str]]:
    """The application's files in the guide: each ```python <path> block, by path."""
    files: dict[str, list[str]] = {}
    for block in APPLICATION_FILE.finditer(GUIDE.read_text(encoding="utf-8")):
        files.setdefault(block.group(1), []).append(block.group(2))
    return files


def run(folder: Path, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {"DATABASE_URL": url}
    return subprocess.run(
        args, cwd=folder, env=environment, capture_output=True, text=True, timeout=180
    )


def make_application(folder: Path, url: str) -> Path:
    """`alembic init -t async migrations` in `folder`, edited as the guide says."""
    made = run(
        folder, sys.executable, "-m", "alembic", "init", "-t", "async", "migrations", url=url
    )
    assert made.returncode == 0, made.stderr
    files = guide_files()
    [models] = files["myapp/models.py"]
    env_lines, configure = files["migrations/env.py"]

    (folder / "myapp").mkdir()
    (folder / "myapp" / "__init__.py").write_text("")
    (folder / "myapp" / "models.py").write_text(models)

    env = folder / "migrations" / "env.py"
    source = env.read_text()
    assert source.count("target_metadata = None\n") == 1
    source = source.replace("target_metadata = None\n", env_lines)
    assert all(argument in configure for argument in CONFIGURE_ARGUMENTS)
    arguments = "".join(f"{argument}, " for argument in CONFIGURE_ARGUMENTS)
    assert source.count("context.configure(") == 2
    env.write_text(source.replace("context.configure(", f"context.configure({arguments}"))

    mako = folder / "migrations" / "script.py.mako"
    assert "import sqlalchemy as sa\n" in mako.read_text()
    mako.write_text(
        mako.read_text().replace(
            "import sqlalchemy as sa\n", "import sqlalchemy as sa\nimport sqlmodel\n"
        )
    )
    return folder


def operations(function: str, source: str) -> list[tuple[str, str]]:
    """The `op.<operation>("<name>", ...)` calls of `def <function>()` in a revision.

    `op.f(name)`, which only marks a name as final, is not an operation.
    """
    body = source.split(f"def {function}()", 1)[1].split("\ndef ", 1)[0]
    calls = re.findall(r"op\.(\w+)\(\s*['\"](\w+)['\"]", body)
    return [(operation, name) for operation, name in calls if operation != "f"]


async def versions(engine: AsyncEngine) -> tuple[str, str]:
    async with engine.connect() as connection:
        package = await connection.execute(text("SELECT version_num FROM alembic_version"))
        application = await connection.execute(
            text("SELECT version_num FROM myapp_alembic_version")
        )
        return package.scalar_one(), application.scalar_one()


async def test_an_application_migrates_its_own_table_beside_the_package(
    server_url: str, tmp_path: Path
) -> None:
    async with migrated_database(server_url, "skill_store_own_tables") as engine:
        url = engine.url.render_as_string(hide_password=False)
        application = make_application(tmp_path, url)
        alembic = (sys.executable, "-m", "alembic")

        generated = run(application, *alembic, "revision", "--autogenerate", "-m", "tasks", url=url)
        assert generated.returncode == 0, generated.stderr
        [revision] = (application / "migrations" / "versions").glob("*.py")
        source = revision.read_text()
        assert operations("upgrade", source) == [("create_table", "myapp_task")], source
        assert operations("downgrade", source) == [("drop_table", "myapp_task")], source

        upgraded = run(application, *alembic, "upgrade", "head", url=url)
        assert upgraded.returncode == 0, upgraded.stderr
        checked = run(application, *alembic, "check", url=url)
        assert checked.returncode == 0, checked.stderr
        assert "No new upgrade operations detected" in checked.stdout

        package_checked = run(application, str(SKILL_STORE), "db", "check", url=url)
        assert package_checked.returncode == 0, package_checked.stderr
        assert "no drift" in package_checked.stdout
        package_upgraded = run(application, str(SKILL_STORE), "db", "upgrade", url=url)
        assert package_upgraded.returncode == 0, package_upgraded.stderr
        assert f"schema at revision {latest_revision()}" in package_upgraded.stdout

        assert await versions(engine) == (latest_revision(), revision.name.split("_")[0])
        async with engine.connect() as connection:
            reference = await connection.execute(
                text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                    " WHERE conrelid = 'myapp_task'::regclass AND confrelid = 'agent'::regclass"
                )
            )
            assert reference.scalar_one().startswith(
                "FOREIGN KEY (team_id, agent_id) REFERENCES agent(team_id, id)"
            )


async def test_db_check_lists_each_difference_on_a_line_of_its_own(server_url: str) -> None:
    async with migrated_database(server_url, "skill_store_drift") as engine:
        async with engine.begin() as connection:
            for statement in (
                "CREATE TABLE myapp_note (id integer PRIMARY KEY, body text NOT NULL)",
                "DROP INDEX idx_conversation_agent",
                "ALTER TABLE memory ALTER COLUMN subject SET NOT NULL",
            ):
                await connection.execute(text(statement))
        url = engine.url.render_as_string(hide_password=False)

        checked = run(Path.cwd(), str(SKILL_STORE), "db", "check", url=url)

    assert checked.returncode == 1
    assert checked.stderr.splitlines() == [
        "error: the schema differs from the models:",
        "  index idx_conversation_agent on conversation: in the models, not in the database",
        "  column memory.subject: nullable is False in the database, True in the models",
    ]
