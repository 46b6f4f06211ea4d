"""Faults: statement timeouts.

These tests commit and use several connections at once, so they run in a database (or a
server) of their own.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from skill_store import (
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    Settings,
    StatementTimeoutError,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    get_engine,
    get_session_factory,
    get_sync_engine,
    migrate,
)

from .conftest import create_database, drop_database

DATABASE = "skill_store_faults"
NOTHING = {"memory": 0, "memory_log": 0, "memory_tag": 0}


@pytest.fixture(scope="module")
async def url(server_url: str) -> AsyncIterator[str]:
    url = await create_database(server_url, DATABASE)
    await migrate(url)
    yield url
    await drop_database(server_url, DATABASE)


@pytest.fixture(scope="module")
async def engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = await get_engine(url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def team_id(engine: AsyncEngine) -> uuid.UUID:
    """A committed team of its own for each test."""
    slug = f"team-{uuid.uuid4().hex[:8]}"
    async with get_session_factory(engine)() as session:
        owner = await UserRepository(session).create(
            UserCreate(email=f"{slug}@example.com", display_name="Owner", password="correct horse")
        )
        team = await TeamRepository(session).create(
            TeamCreate(name=slug, slug=slug, owner_id=owner.id)
        )
        await session.commit()
    return team.id


async def leftovers(engine: AsyncEngine, team_id: uuid.UUID, marker: str) -> dict[str, int]:
    """Rows another connection sees of a write whose contents and tags start with `marker`."""
    async with engine.connect() as connection:
        counts = (
            await connection.execute(
                text(
                    "SELECT (SELECT count(*) FROM memory WHERE team_id = :team_id),"
                    " (SELECT count(*) FROM memory_log WHERE new_content LIKE :prefix),"
                    " (SELECT count(*) FROM memory_tag WHERE tag LIKE :prefix)"
                ),
                {"team_id": team_id, "prefix": f"{marker}%"},
            )
        ).one()
    return dict(zip(("memory", "memory_log", "memory_tag"), counts, strict=True))


def memories(team_id: uuid.UUID, marker: str, count: int) -> list[MemoryCreate]:
    return [
        MemoryCreate(
            team_id=team_id,
            memory_type=MemoryType.SEMANTIC,
            content=f"{marker} fact {index}",
            tags=[marker],
        )
        for index in range(count)
    ]


# -- statement timeout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "shown"), [(timedelta(milliseconds=1500), "1500ms"), (None, "0")]
)
async def test_statement_timeout_is_set_on_every_connection(
    url: str, timeout: timedelta | None, shown: str
) -> None:
    settings = Settings(statement_timeout=timeout)
    engine = await get_engine(url, settings=settings)
    sync_engine = get_sync_engine(url, settings=settings)
    try:
        async with engine.connect() as first, engine.connect() as second:
            for connection in (first, second):
                assert (await connection.execute(text("SHOW statement_timeout"))).scalar() == shown
        with sync_engine.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == shown
    finally:
        await engine.dispose()
        sync_engine.dispose()


async def test_timed_out_write_raises_statement_timeout_and_writes_nothing(
    url: str, engine: AsyncEngine, team_id: uuid.UUID
) -> None:
    timed = await get_engine(url, settings=Settings(statement_timeout=200))
    marker = f"timeout-{uuid.uuid4().hex[:8]}"
    try:
        async with engine.connect() as locker:
            # A memory's foreign key check must share-lock its team row: it waits here.
            await locker.execute(
                text("SELECT 1 FROM team WHERE id = :id FOR UPDATE"), {"id": team_id}
            )
            async with get_session_factory(timed)() as session:
                repository = MemoryRepository(session)
                with pytest.raises(StatementTimeoutError, match="statement timeout"):
                    async with asyncio.timeout(60):  # without the setting it would wait forever
                        await repository.add_many(memories(team_id, marker, 10), actor="test")
                # The failed call's savepoint is gone; the session's transaction goes on.
                assert await TeamRepository(session).get_by_id(team_id) is not None
                await session.commit()
            await locker.rollback()
    finally:
        await timed.dispose()
    assert await leftovers(engine, team_id, marker) == NOTHING
