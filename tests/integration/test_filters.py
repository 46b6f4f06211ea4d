"""`list` and `count` of every repository, filtered by every column of its table.

The columns come from the models, so a new column is swept too; the rows filtered on hold a
value in every column (a NULL would test nothing), read back from the database.
"""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

import skill_store
from skill_store import (
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    AgentStatus,
    ConversationCreate,
    ConversationRepository,
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    MessageCreate,
    MessageRole,
    Repository,
    TeamCreate,
    TeamRepository,
    TeamRowRepository,
    UserCreate,
    UserRepository,
)

from ..support import unit_vector

REPOSITORIES = sorted(
    (
        value
        for value in vars(skill_store).values()
        if isinstance(value, type)
        and issubclass(value, Repository | TeamRowRepository)
        and hasattr(value, "model")
    ),
    key=lambda repository: repository.__name__,
)


def test_every_repository_is_swept() -> None:
    assert {repository.__name__ for repository in REPOSITORIES} == {
        "AgentRepository",
        "ConversationRepository",
        "MemoryRepository",
        "TeamRepository",
        "UserRepository",
    }


async def full_rows(session: AsyncSession) -> dict[type[SQLModel], SQLModel]:
    """A row of each repository's table with a value in every column, and rows beside them."""
    users = UserRepository(session)
    ada = await users.create(
        UserCreate(email="ada@example.com", display_name="Ada", password="correct horse")
    )
    await users.create(
        UserCreate(email="bob@example.com", display_name="Bob", password="correct horse")
    )
    teams = TeamRepository(session)
    team = await teams.create(
        TeamCreate(
            name="Acme",
            slug="acme",
            owner_id=ada.id,
            settings={"plan": "pro"},
            shared_skill_names=["web-search"],
            webhook_url="https://acme.example/hook",
            webhook_secret="s3cret",
            conversation_retention_days=30,
        )
    )
    await teams.create(TeamCreate(name="Globex", slug="globex", owner_id=ada.id))
    agents = AgentRepository(session)
    kyra = await agents.create(
        AgentCreate(
            team_id=team.id,
            name="Kyra",
            slug="kyra",
            tagline="remembers",
            avatar_emoji="🧠",
            personality=AgentPersonality(system_prompt_template="You are Kyra.", tone="friendly"),
            shared_skill_names=["calendar"],
            custom_skill_names=["reminders"],
            disabled_skill_names=["web-search"],
            status=AgentStatus.ACTIVE,
            created_by=ada.id,
        )
    )
    atlas = await agents.create(
        AgentCreate(
            team_id=team.id,
            name="Atlas",
            slug="atlas",
            personality=AgentPersonality(system_prompt_template="You are Atlas."),
        )
    )
    conversations = ConversationRepository(session)
    conversation = await conversations.create(
        ConversationCreate(
            team_id=team.id,
            agent_id=kyra.id,
            user_id=ada.id,
            title="Climbing",
            summary="Ada climbs",
            metadata_json={"channel": "web"},
        )
    )
    await conversations.create(
        ConversationCreate(team_id=team.id, agent_id=atlas.id, user_id=ada.id)
    )
    message = await conversations.add_message(
        conversation.id,
        MessageCreate(role=MessageRole.USER, content="I climb", token_count=3),
        team_id=team.id,
    )
    memories = MemoryRepository(session)
    now = datetime.now(UTC)
    full = await memories.create(
        MemoryCreate(
            team_id=team.id,
            agent_id=kyra.id,
            user_id=ada.id,
            memory_type=MemoryType.EPISODIC,
            content="Ada climbs",
            subject="climbing",
            embedding=unit_vector(0),
            embedding_model="hashing",
            importance=8,
            confidence=0.9,
            is_pinned=True,
            source_conversation_id=conversation.id,
            source_message_ids=[message.id],
            extraction_model="extractor",
            contradicts=[uuid.uuid4()],
            related_to=[uuid.uuid4()],
            metadata={"source": "chat"},
            expires_at=now + timedelta(days=30),
            created_at=now - timedelta(days=1),
        )
    )
    await memories.supersede(
        full.id,
        MemoryCreate(team_id=team.id, memory_type=MemoryType.EPISODIC, content="Ada climbs a lot"),
    )
    await memories.create(
        MemoryCreate(team_id=team.id, memory_type=MemoryType.SEMANTIC, content="Tea")
    )
    rows: list[SQLModel] = [ada, team, kyra, conversation, full]
    for row in rows:
        await session.refresh(row)  # the database's values: defaults, computed columns
    return {type(row): row for row in rows}


def team_of(repository: type, row: SQLModel) -> dict[str, Any]:
    return {"team_id": row.team_id} if issubclass(repository, TeamRowRepository) else {}  # type: ignore[attr-defined]


@pytest.mark.parametrize("repository", REPOSITORIES, ids=lambda repository: repository.__name__)
async def test_list_and_count_by_every_column(session: AsyncSession, repository: type) -> None:
    full = (await full_rows(session))[repository.model]
    scoped = repository(session)
    for name, column in sa.inspect(repository.model).columns.items():
        if name == "team_id":
            continue  # the team of a team's rows is given apart
        value = getattr(full, name)
        assert value is not None, f"the row to filter on needs a value in {name}"

        found = await scoped.list(limit=1000, **team_of(repository, full), **{name: value})

        assert full.id in [row.id for row in found], name  # type: ignore[attr-defined]
        assert all(getattr(row, name) == value for row in found), name
        assert await scoped.count(**team_of(repository, full), **{name: value}) == len(found)
        if column.nullable:
            unset = await scoped.list(limit=1000, **team_of(repository, full), **{name: None})
            assert all(getattr(row, name) is None for row in unset), name
