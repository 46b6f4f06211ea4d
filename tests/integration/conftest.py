"""Integration fixtures: a real PostgreSQL with pgvector, and one migrated test database.

The server is `TEST_DATABASE_URL` (a server the tests may create and drop databases on)
or, by default, a throwaway embedded server. Each test runs in a transaction that is
rolled back afterwards, so tests see only their own rows.
"""

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentCreate,
    AgentPersonality,
    Conversation,
    ConversationCreate,
    Team,
    TeamCreate,
    TeamMembership,
    User,
    UserCreate,
    UserRole,
)
from skill_store.database import get_engine, migrate, start_embedded_server
from skill_store.settings import get_settings, normalize_database_url

TABLES = tuple(table.name for table in SQLModel.metadata.sorted_tables)
TEAM_TABLES = tuple(table.name for table in SQLModel.metadata.sorted_tables if "team_id" in table.c)
"""The tables of a team's rows: each is keyed, distributed and guarded by `team_id`."""
FINGERPRINT = " UNION ALL ".join(
    f"SELECT '{table}', count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
    f' FROM "{table}" AS t'
    for table in TABLES
)


async def fingerprint(session: AsyncSession) -> dict[str, tuple[int, str]]:
    """Row count and checksum of every table, as the session sees them."""
    rows = await session.exec(text(FINGERPRINT))  # type: ignore[call-overload]
    return {table: (count, digest) for table, count, digest in rows}


def unit_vector(*hot: int) -> list[float]:
    """An embedding of the configured length with 1.0 at the `hot` positions."""
    vector = [0.0] * get_settings().embedding_dimensions
    for position in hot:
        vector[position] = 1.0
    return vector


async def create_database(server_url: str, name: str) -> str:
    """Create (or re-create) an empty database on the server; return its URL."""
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await connection.execute(text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, name: str) -> None:
    admin = create_async_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@asynccontextmanager
async def migrated_database(server_url: str, name: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a new, migrated database of its own, dropped afterwards."""
    engine = await get_engine(await create_database(server_url, name))
    await migrate(engine)
    yield engine
    await engine.dispose()
    await drop_database(server_url, name)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    if url := os.environ.get("TEST_DATABASE_URL"):
        return normalize_database_url(url)
    return start_embedded_server(tmp_path_factory.mktemp("embedded") / "pgdata")


@pytest.fixture(scope="session")
async def engine(server_url: str) -> AsyncIterator[AsyncEngine]:
    url = await create_database(server_url, "skill_store_test")
    engine = await get_engine(url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
async def empty_database_url(server_url: str) -> AsyncIterator[str]:
    """URL of a new, empty database, dropped after the test."""
    name = f"skill_store_empty_{uuid.uuid4().hex[:8]}"
    yield await create_database(server_url, name)
    await drop_database(server_url, name)


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


@pytest.fixture
async def user(session: AsyncSession) -> User:
    user = User.model_validate(
        UserCreate(email="ada@example.com", display_name="Ada", password="correct horse"),
        update={"password_hash": "not-a-real-hash"},
    )
    session.add(user)
    await session.flush()
    return user


@pytest.fixture
async def team(session: AsyncSession, user: User) -> Team:
    """Acme, owned by `user`, who is its member as `TeamRepository.create` makes them."""
    team = Team.model_validate(TeamCreate(name="Acme", slug="acme", owner_id=user.id))
    session.add(team)
    await session.flush()
    session.add(TeamMembership(user_id=user.id, team_id=team.id, role=UserRole.OWNER))
    await session.flush()
    return team


@pytest.fixture
async def agent(session: AsyncSession, team: Team, user: User) -> Agent:
    agent = Agent.model_validate(
        AgentCreate(
            team_id=team.id,
            name="Kyra",
            slug="kyra",
            personality=AgentPersonality(system_prompt_template="You are Kyra. {memory_context}"),
            created_by=user.id,
        )
    )
    session.add(agent)
    await session.flush()
    return agent


@pytest.fixture
async def conversation(session: AsyncSession, team: Team, agent: Agent, user: User) -> Conversation:
    conversation = Conversation.model_validate(
        ConversationCreate(team_id=team.id, agent_id=agent.id, user_id=user.id, title="Hello")
    )
    session.add(conversation)
    await session.flush()
    return conversation
