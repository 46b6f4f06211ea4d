"""The `skill-store db` commands, run as a user runs them: a process, outside the repository."""

import asyncio
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from skill_store.database import alembic_config, migrate

SKILL_STORE = Path(sys.executable).with_name("skill-store")


def skill_store(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | env
    return subprocess.run(
        [str(SKILL_STORE), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def on_a_terminal(cwd: Path, args: list[str], answers: list[str], **env: str) -> tuple[int, str]:
    """Run `skill-store args` with a terminal of its own as its controlling terminal, typing
    each answer once what it showed since the last answer ends with a question; its exit
    status and what the terminal showed."""
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | env
    pid, leader = pty.fork()
    if pid == 0:  # the child: the terminal's session leader
        os.chdir(cwd)
        os.execve(SKILL_STORE, [str(SKILL_STORE), *args], environment)
    shown, pending, answered = b"", list(answers), 0
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        assert ready, f"the command said nothing for 2 minutes: {shown!r}"
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the command ended and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        # A question ends with a space, which comes once the answer can be typed: after
        # the terminal stops echoing, for a password.
        if pending and shown[answered:].endswith((b"? ", b": ", b"] ")):
            os.write(leader, pending.pop(0).encode() + b"\n")
            answered = len(shown)
    os.close(leader)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace").replace("\r\n", "\n")


def test_upgrade_current_check_downgrade(tmp_path: Path, empty_database_url: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return skill_store(tmp_path, "db", *args, DATABASE_URL=empty_database_url)

    not_migrated = run("current")
    assert not_migrated.returncode == 1
    assert "not migrated" in not_migrated.stderr
    assert "skill-store db upgrade" in not_migrated.stderr

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    upgraded = run("upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"schema at revision {head}" in upgraded.stdout
    assert f"schema at revision {head} (latest)" in run("current").stdout

    checked = run("check")
    assert checked.returncode == 0, checked.stderr
    assert "no drift" in checked.stdout

    refused = run("downgrade", "base")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: the downgrade to base removes the tables agent,")
    assert "pass --yes" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert f"schema at revision {head} (latest)" in run("current").stdout  # nothing changed

    downgraded = run("downgrade", "base", "--yes")
    assert downgraded.returncode == 0, downgraded.stderr
    assert "base (empty)" in downgraded.stdout
    assert run("current").returncode == 1


def test_a_downgrade_that_removes_no_column_does_not_ask(
    tmp_path: Path, empty_database_url: str
) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return skill_store(tmp_path, "db", *args, DATABASE_URL=empty_database_url)

    assert run("upgrade", "0016").returncode == 0  # 0016 adds functions and indexes only
    downgraded = run("downgrade", "0015")

    assert downgraded.returncode == 0, downgraded.stderr
    assert "schema at revision 0015" in downgraded.stdout


def test_a_downgrade_that_removes_data_asks_on_a_terminal(
    tmp_path: Path, empty_database_url: str
) -> None:
    assert skill_store(tmp_path, "db", "upgrade", DATABASE_URL=empty_database_url).returncode == 0
    arguments = ["db", "downgrade", "0013"]  # 0014 added team.language

    declined, said = on_a_terminal(tmp_path, arguments, ["n"], DATABASE_URL=empty_database_url)
    assert declined == 1, said
    question = said[said.index("The downgrade to 0013 removes the columns ") :]
    assert "team.language" in question.split("with their data")[0]
    assert "error: not downgraded" in said
    current = skill_store(tmp_path, "db", "current", DATABASE_URL=empty_database_url)
    assert "(latest)" in current.stdout

    accepted, said = on_a_terminal(tmp_path, arguments, ["y"], DATABASE_URL=empty_database_url)
    assert accepted == 0, said
    assert "schema at revision 0013" in said


def test_unreachable_database_is_one_line_without_password(tmp_path: Path) -> None:
    result = skill_store(
        tmp_path, "db", "upgrade", DATABASE_URL="postgresql://bob:s3cret@127.0.0.1:1/store"
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the database at ")
    assert "bob:***@127.0.0.1:1/store" in result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DATABASE_URL", "mysql://x@y/z", "DATABASE_URL: Value error, database URL must start"),
        ("DATABASE_POOL_SIZE", "0", "DATABASE_POOL_SIZE: Input should be greater than or equal"),
    ],
)
def test_bad_configuration_is_named(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = skill_store(tmp_path, "db", "url", **{variable: value})
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_url_masks_the_password(tmp_path: Path) -> None:
    result = skill_store(tmp_path, "db", "url", DATABASE_URL="postgres://bob:s3cret@db.example/x")
    assert result.returncode == 0
    assert result.stdout.strip() == "postgresql+asyncpg://bob:***@db.example/x"


def test_url_starts_the_embedded_server_without_database_url(
    tmp_path: Path, server_folder: Path
) -> None:
    data_dir = server_folder / "data" / "pgdata"
    result = skill_store(tmp_path, "db", "url", EMBEDDED_DATA_DIR=str(data_dir))
    assert result.returncode == 0, result.stderr
    assert f"(embedded server in {data_dir})" in result.stdout
    assert (data_dir / "PG_VERSION").read_text().strip() == "18"


async def test_a_downgrade_the_data_refuses_is_one_line(
    tmp_path: Path, empty_database_url: str
) -> None:
    engine = create_async_engine(empty_database_url, poolclass=NullPool)
    await migrate(engine)
    async with engine.begin() as connection:
        await connection.execute(
            text(
                """WITH u AS (INSERT INTO "user" (email, password_hash, display_name)"""
                """ VALUES ('a@b.co', 'h', 'A')"""
                " RETURNING id), t AS (INSERT INTO team (name, slug, owner_id)"
                " SELECT name, name, u.id FROM u, unnest(ARRAY['acme', 'globex']) AS name"
                " RETURNING id)"
                " INSERT INTO memory (id, team_id, memory_type, content)"
                " SELECT '00000000-0000-4000-8000-00000000000f', id, 'semantic', 'copied' FROM t"
            )
        )
    await engine.dispose()

    result = await asyncio.to_thread(
        skill_store, tmp_path, "db", "downgrade", "0004", DATABASE_URL=empty_database_url
    )

    assert result.returncode == 1
    assert result.stderr.startswith("error: the migration stopped and changed nothing: 1 ids")
    assert result.stderr.count("\n") == 1
