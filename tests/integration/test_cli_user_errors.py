"""Every user error of the command line is one line on stderr and a non-zero exit."""

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession
from typer.testing import CliRunner, Result

from skill_store import (
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    cli,
    get_session_factory,
)
from skill_store.cli import app
from skill_store.settings import get_settings

from ..support import migrated_database

DATABASE = "skill_store_cli_errors"


@pytest.fixture(scope="module")
async def acme_url(server_url: str) -> AsyncIterator[str]:
    """A migrated database with one team, `acme`, and no memories."""
    async with migrated_database(server_url, DATABASE) as engine:
        async with get_session_factory(engine)() as session:
            owner = await UserRepository(session).create(
                UserCreate(email="ada@example.com", display_name="Ada", password="correct horse")
            )
            await TeamRepository(session).create(
                TeamCreate(name="Acme", slug="acme", owner_id=owner.id)
            )
            await session.commit()
        yield engine.url.render_as_string(hide_password=False)


@pytest.fixture
def run(acme_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("DATABASE_URL", acme_url)
    get_settings.cache_clear()

    def invoke(*args: str) -> Result:
        return CliRunner().invoke(app, list(args), prog_name="skill-store")

    yield invoke
    get_settings.cache_clear()


def assert_one_line_error(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: "), result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.output
    assert "imported" not in result.stdout and "exported" not in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("limit", ["-1", "0", "99999999999"])
@pytest.mark.parametrize(
    "command",
    [["memories", "list", "--team", "acme"], ["memories", "search", "--team", "acme", "tea"]],
    ids=["list", "search"],
)
def test_limit_out_of_range(run: Any, command: list[str], limit: str) -> None:
    assert_one_line_error(run(*command, "--limit", limit), "--limit must be between 1 and")


def lines(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "memories.jsonl"
    path.write_bytes(content)
    return path


GOOD_LINE = b'{"memory_type": "semantic", "content": "Likes tea"}\n'


@pytest.mark.parametrize("batch_size", ["0", "-1"])
def test_import_batch_size_below_one(run: Any, tmp_path: Path, batch_size: str) -> None:
    path = lines(tmp_path, GOOD_LINE)
    result = run("memories", "import", str(path), "--team", "acme", "--batch-size", batch_size)
    assert_one_line_error(result, "--batch-size must be at least 1")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            GOOD_LINE + b'{"memory_type": "semantic", "content": "caf\xe9"}\n',
            "line 2: not UTF-8",
            id="latin-1",
        ),
        pytest.param(
            GOOD_LINE + b"[" * 100_000 + b"]" * 100_000 + b"\n",
            "line 2: JSON nested too deeply",
            id="nested-100000-deep",
        ),
        pytest.param(
            b'{"memory_type": "semantic", "content": "deep", "metadata_json": '
            + b'{"a": ' * 5_000
            + b"1"
            + b"}" * 5_000
            + b"}\n",
            "line 1: JSON nested too deeply",
            id="nested-metadata",
        ),
    ],
)
def test_import_of_an_unreadable_file_names_the_line_and_writes_nothing(
    run: Any, tmp_path: Path, acme_url: str, content: bytes, message: str
) -> None:
    result = run("memories", "import", str(lines(tmp_path, content)), "--team", "acme")
    assert_one_line_error(result, message)
    assert "nothing imported" in result.stderr


def test_export_to_a_missing_folder(run: Any, tmp_path: Path) -> None:
    output = tmp_path / "missing" / "memories.jsonl"
    result = run("memories", "export", "--team", "acme", "--output", str(output))
    assert_one_line_error(result, f"{output.parent} is not a folder")
    assert not output.parent.exists()


async def test_nothing_was_imported(acme_url: str) -> None:
    from skill_store import get_engine

    engine = await get_engine(acme_url)
    async with engine.connect() as connection:
        assert (await connection.execute(text("SELECT count(*) FROM memory"))).scalar() == 0
    await engine.dispose()


def test_a_connection_lost_before_the_commit_is_one_line(
    run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import's transaction is cut just before the command commits it."""

    async def cut_import(session: AsyncSession, *args: Any, **kwargs: Any) -> int:
        pid = (await session.exec(text("SELECT pg_backend_pid()"))).one()[0]  # type: ignore[call-overload]
        bind = session.bind
        assert bind is not None
        engine = create_async_engine(bind.engine.url, poolclass=NullPool)
        async with engine.connect() as other:
            await other.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
        await engine.dispose()
        return 1

    monkeypatch.setattr(cli, "import_memories", cut_import)
    result = run("memories", "import", str(lines(tmp_path, GOOD_LINE)), "--team", "acme")
    assert_one_line_error(result, "the connection to the database was lost")


UNDECODABLE = "ac\udcffme"
"""A word as Python reads it from a command line that is not UTF-8 (a lone surrogate)."""


@pytest.mark.parametrize(
    ("command", "message"),
    [
        pytest.param(["memories", "search", "--team", "acme", "   "], "blank", id="blank-query"),
        pytest.param(["memories", "search", "--team", "acme", ""], "blank", id="empty-query"),
        pytest.param(
            ["memories", "search", "--team", "acme", f"tea {UNDECODABLE}"],
            "lone surrogate",
            id="search-query",
        ),
        pytest.param(
            ["memories", "search", "--team", "acme", "--agent", UNDECODABLE, "tea"],
            "lone surrogate",
            id="search-agent",
        ),
        pytest.param(
            ["memories", "search", "--team", UNDECODABLE, "tea"], "lone surrogate", id="search"
        ),
        pytest.param(["memories", "list", "--team", UNDECODABLE], "lone surrogate", id="list"),
        pytest.param(
            ["memories", "show", "--team", UNDECODABLE, str(uuid.uuid4())],
            "lone surrogate",
            id="show",
        ),
        pytest.param(
            ["memories", "history", "--team", UNDECODABLE, str(uuid.uuid4())],
            "lone surrogate",
            id="history",
        ),
        pytest.param(["memories", "export", "--team", UNDECODABLE], "lone surrogate", id="export"),
        pytest.param(["agents", "list", "--team", UNDECODABLE], "lone surrogate", id="agents"),
        pytest.param(
            ["agents", "show", "--team", "acme", UNDECODABLE], "lone surrogate", id="agent-show"
        ),
    ],
)
def test_text_the_database_cannot_take_is_one_line(
    run: Any, command: list[str], message: str
) -> None:
    assert_one_line_error(run(*command), message)


def test_import_into_a_team_named_with_text_the_database_cannot_take(
    run: Any, tmp_path: Path
) -> None:
    path = lines(tmp_path, GOOD_LINE)
    assert_one_line_error(
        run("memories", "import", str(path), "--team", UNDECODABLE), "lone surrogate"
    )
