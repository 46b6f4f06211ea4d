"""Integration fixtures: a real PostgreSQL with pgvector, and one migrated test database.

The server is `TEST_DATABASE_URL` (a server the tests may create and drop databases on)
or, by default, a throwaway embedded server in a folder of the session's own; should it die,
the session ends with the last lines of its log. Each test runs in a transaction that is
rolled back afterwards, so tests see only their own rows.
"""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentCreate,
    AgentPersonality,
    Conversation,
    ConversationCreate,
    Embedder,
    HashingEmbedder,
    MemoryRepository,
    Team,
    TeamCreate,
    TeamMembership,
    User,
    UserCreate,
    UserRole,
)
from skill_store.database import get_engine, migrate
from skill_store.settings import get_settings, normalize_database_url
from skill_store.team_indexes import finish_index_builds

from ..support import (
    create_database,
    drop_database,
    embedded_server,
    private_folder,
    why_stopped,
)


@dataclass(frozen=True)
class SessionServer:
    url: str
    data_dir: Path | None
    """The embedded server's data directory; None for `TEST_DATABASE_URL`."""


@pytest.fixture(scope="session")
def session_server() -> Iterator[SessionServer]:
    if url := os.environ.get("TEST_DATABASE_URL"):
        yield SessionServer(normalize_database_url(url), None)
        return
    with embedded_server("skill_store_tests_") as (url, data_dir):
        yield SessionServer(url, data_dir)


@pytest.fixture
def server_folder() -> Iterator[Path]:
    """A folder of the test's own for an embedded server's data directory (`private_folder`)."""
    with private_folder("skill_store_test_") as folder:
        yield folder


@pytest.fixture(scope="session")
def server_url(session_server: SessionServer) -> str:
    return session_server.url


@pytest.fixture(autouse=True)
def _session_server_runs(session_server: SessionServer) -> None:
    """End the session, saying why, when the embedded test server has died: every later
    test would fail with "Connection refused"."""
    if session_server.data_dir is not None and (why := why_stopped(session_server.data_dir)):
        pytest.exit(why, returncode=3)


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


@pytest.fixture
def embedder() -> Embedder:
    """The offline embedder, at the settings' dimensions (a test module may use another)."""
    return HashingEmbedder(get_settings().embedding_dimensions)


@pytest.fixture
def memories(session: AsyncSession, embedder: Embedder) -> MemoryRepository:
    """The memory repository of the test's session, embedding with `embedder`."""
    return MemoryRepository(session, embedder=embedder)
