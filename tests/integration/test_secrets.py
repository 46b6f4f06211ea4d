"""Secrets never leave the store: not in errors, logs, CLI output or reprs.

A store with a user of known password, a team with a known webhook secret, and a database
URL with a known password; every output is searched for each of them. These tests commit,
so they run in a database of their own.
"""

import logging
import traceback
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from skill_store import (
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    ConflictError,
    DatabaseUnreachableError,
    MemoryRepository,
    MemoryType,
    TeamCreate,
    TeamRepository,
    TeamUpdate,
    UserCreate,
    UserRepository,
    finish_index_builds,
    get_engine,
    get_session_factory,
    get_sync_engine,
    migrate,
)
from skill_store.cli import app
from skill_store.database import ensure_migrated
from skill_store.settings import get_settings

from ..support import create_database, drop_database

DATABASE = "skill_store_secrets"
PASSWORD = "correct horse battery staple"
WEBHOOK_SECRET = "whsec_9f8e7d6c5b4a"
ANY_HASH = "$argon2"  # every stored password hash starts so


@dataclass
class Store:
    url: str
    """The database URL with a password in it (ignored by a server that trusts local users)."""
    url_password: str
    password_hash: str
    team_slug: str
    memory_id: uuid.UUID

    @property
    def secrets(self) -> list[str]:
        return [PASSWORD, self.password_hash, ANY_HASH, WEBHOOK_SECRET, self.url_password]


def with_password(url: str) -> tuple[str, str]:
    """`url` with a password: its own, or one added."""
    parsed = make_url(url)
    password = parsed.password or f"url-pass-{uuid.uuid4().hex[:8]}"
    return parsed.set(password=password).render_as_string(hide_password=False), password


@pytest.fixture(scope="module")
async def store(server_url: str) -> AsyncIterator[Store]:
    url, url_password = with_password(await create_database(server_url, DATABASE))
    await migrate(url)
    engine = await get_engine(url)
    async with get_session_factory(engine)() as session:
        owner = await UserRepository(session).create(
            UserCreate(email="ada@example.com", display_name="Ada", password=PASSWORD)
        )
        team = await TeamRepository(session).create(
            TeamCreate(name="Acme", slug="acme", owner_id=owner.id, webhook_secret=WEBHOOK_SECRET)
        )
        await AgentRepository(session).create(
            AgentCreate(
                team_id=team.id,
                name="Kyra",
                slug="kyra",
                personality=AgentPersonality(system_prompt_template="You are Kyra."),
            )
        )
        memory = await MemoryRepository(session).remember(
            "Ada prefers tea", MemoryType.SEMANTIC, team_id=team.id, tags=["drinks"]
        )
        await session.commit()
    await finish_index_builds(engine)
    await engine.dispose()
    yield Store(url, url_password, owner.password_hash, team.slug, memory.id)
    await drop_database(server_url, DATABASE)


@pytest.fixture
async def engine(store: Store) -> AsyncIterator[AsyncEngine]:
    engine = await get_engine(store.url)
    yield engine
    await engine.dispose()


def assert_no_secret(store: Store, shown: str) -> None:
    for secret in store.secrets:
        assert secret not in shown


def log_everything(caplog: pytest.LogCaptureFixture) -> None:
    """Capture INFO and up, SQLAlchemy's statements included (as with `echo=True`)."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")


def everything_about(error: BaseException) -> str:
    """The error as a traceback prints it, with its causes, and the repr of each."""
    shown = "".join(traceback.format_exception(error))
    cause = error.__cause__ or error.__context__
    while cause is not None:
        shown += f"\n{cause!r}"
        cause = cause.__cause__ or cause.__context__
    return shown


async def test_errors_do_not_carry_secrets(store: Store, engine: AsyncEngine) -> None:
    async with get_session_factory(engine)() as session:
        with pytest.raises(ConflictError) as duplicate_user:
            await UserRepository(session).create(
                UserCreate(email="ADA@example.com", display_name="Ada", password=PASSWORD)
            )
        owner = await UserRepository(session).get_by_email("ada@example.com")
        assert owner is not None
        with pytest.raises(ConflictError) as duplicate_team:
            await TeamRepository(session).create(
                TeamCreate(
                    name="Acme", slug="acme", owner_id=owner.id, webhook_secret=WEBHOOK_SECRET
                )
            )
        team = await TeamRepository(session).get_by_slug("acme")
        assert team is not None
        await TeamRepository(session).create(
            TeamCreate(name="Other", slug="other", owner_id=owner.id)
        )
        with pytest.raises(ConflictError) as taken_slug:
            await TeamRepository(session).update(
                team.id, TeamUpdate(slug="other", webhook_secret=WEBHOOK_SECRET)
            )
    for info in (duplicate_user, duplicate_team, taken_slug):
        shown = everything_about(info.value)
        assert "already exists" in shown
        assert "[SQL parameters hidden due to hide_parameters=True]" in shown
        assert_no_secret(store, shown)


async def test_logged_statements_do_not_carry_secrets(
    store: Store, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    log_everything(caplog)
    async with get_session_factory(engine)() as session:
        users = UserRepository(session)
        user = await users.create(
            UserCreate(email="grace@example.com", display_name="Grace", password=PASSWORD)
        )
        assert await users.authenticate("grace@example.com", PASSWORD) is user
        await users.set_password(user.id, PASSWORD[::-1])
        team = await TeamRepository(session).get_by_slug("acme")
        assert team is not None
        await TeamRepository(session).update(team.id, {"webhook_secret": WEBHOOK_SECRET[::-1]})
        await session.rollback()
    assert 'INSERT INTO "user"' in caplog.text
    assert_no_secret(store, caplog.text)
    assert PASSWORD[::-1] not in caplog.text
    assert WEBHOOK_SECRET[::-1] not in caplog.text


def test_cli_output_carries_no_secret(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log_everything(caplog)
    monkeypatch.setenv("DATABASE_URL", store.url)
    get_settings.cache_clear()
    team, memory = store.team_slug, str(store.memory_id)
    commands = [
        (["db", "url"], 0),
        (["db", "current"], 0),
        (["stats"], 0),
        (["stats", "--json"], 0),
        (["teams", "list"], 0),
        (["teams", "list", "--json"], 0),
        (["agents", "list", "--team", team], 0),
        (["agents", "list", "--team", team, "--json"], 0),
        (["agents", "show", "--team", team, "kyra", "--json"], 0),
        (["memories", "list", "--team", team, "--json"], 0),
        (["memories", "show", "--team", team, memory, "--json"], 0),
        (["memories", "history", "--team", team, memory, "--json"], 0),
        (["memories", "search", "--team", team, "tea", "--json"], 0),
        (["memories", "export", "--team", team], 0),
        (["memories", "list", "--team", "nobody"], 1),
        (["demo"], 0),
    ]
    printed = ""
    try:
        for args, status in commands:
            result = CliRunner().invoke(app, args)
            assert result.exit_code == status, (args, result.output)
            printed += result.output
    finally:
        get_settings.cache_clear()
    assert ":***@" in printed  # the URL is shown, masked
    assert "Ada prefers tea" in printed
    assert_no_secret(store, printed)
    assert_no_secret(store, caplog.text)
    assert "demo-password" not in printed + caplog.text


async def test_engine_reprs_and_connection_errors_mask_the_url_password(store: Store) -> None:
    engine = await get_engine(store.url)
    sync_engine = get_sync_engine(store.url)
    try:
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
        shown = "\n".join(
            f"{value!r}\n{value!s}" for value in (engine.sync_engine, engine.url, sync_engine)
        )
        assert "***" in shown
        assert store.url_password not in shown
    finally:
        await engine.dispose()
        sync_engine.dispose()

    unreachable = await get_engine(f"postgresql://bob:{store.url_password}@127.0.0.1:1/store")
    try:
        with pytest.raises(DatabaseUnreachableError) as info:
            await ensure_migrated(unreachable)
    finally:
        await unreachable.dispose()
    assert "bob:***@127.0.0.1:1/store" in str(info.value)
    assert store.url_password not in everything_about(info.value)
