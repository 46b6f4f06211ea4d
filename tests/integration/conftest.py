"""Integration fixtures: a real PostgreSQL with pgvector, and one migrated test database.

The server is `TEST_DATABASE_URL` (a server the tests may create and drop databases on)
or, by default, a throwaway embedded server. Each test runs in a transaction that is
rolled back afterwards, so tests see only their own rows.
"""

import os
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
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
from skill_store.settings import normalize_database_url
from skill_store.team_indexes import finish_index_builds

from ..support import create_database, drop_database


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
    await finish_index_builds(engine)
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
