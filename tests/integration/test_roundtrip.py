"""Every table written through its model (or raw SQL) and read back from the database."""

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlmodel import SQLModel, select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentBoundaries,
    AgentCreate,
    AgentDNA,
    AgentMemoryConfig,
    AgentModelConfig,
    AgentPersonality,
    AgentStatus,
    Conversation,
    ConversationCreate,
    ConversationStatus,
    Memory,
    MemoryCreate,
    MemoryLog,
    MemoryLogCreate,
    MemoryRead,
    MemorySource,
    MemoryStatus,
    MemoryTag,
    MemoryTagCreate,
    MemoryTier,
    MemoryType,
    Message,
    MessageCreate,
    MessageRole,
    RetrievalWeights,
    Team,
    TeamCreate,
    TeamMembership,
    TeamMembershipCreate,
    TeamRead,
    User,
    UserCreate,
    UserRead,
    UserRole,
    VoiceExample,
)

from ..support import scalar, unit_vector

RowT = TypeVar("RowT", bound=SQLModel)


async def reload(session: AsyncSession, model: type[RowT], row_id: uuid.UUID) -> RowT:
    """The row as the database has it: nothing comes from the identity map."""
    session.expunge_all()
    return (await session.exec(select(model).where(model.id == row_id))).one()  # type: ignore[attr-defined]


@asynccontextmanager
async def rejected(session: AsyncSession, constraint: str) -> AsyncIterator[None]:
    """Expect the block to violate `constraint`; the test transaction survives."""
    with pytest.raises(IntegrityError, match=constraint):
        async with session.begin_nested():
            yield


async def add(session: AsyncSession, row: RowT) -> RowT:
    session.add(row)
    await session.flush()
    return row


async def assert_filled(session: AsyncSession, *moments: datetime | None) -> None:
    """Timestamps the database filled in: the test transaction's `now()`."""
    now = await scalar(session, "SELECT now()")
    assert moments == (now,) * len(moments)


# Through the models


async def test_user(session: AsyncSession, user: User) -> None:
    loaded = await reload(session, User, user.id)
    assert (loaded.email, loaded.display_name, loaded.password_hash) == (
        "ada@example.com",
        "Ada",
        "not-a-real-hash",
    )
    assert loaded.is_active is True
    await assert_filled(session, loaded.created_at, loaded.updated_at)
    assert "password_hash" not in UserRead.model_validate(loaded).model_dump()


async def test_team(session: AsyncSession, user: User) -> None:
    team = Team.model_validate(
        TeamCreate(
            name="Beta",
            slug="beta-2",
            owner_id=user.id,
            settings={"locale": "fr", "limits": {"agents": 3}, "flags": [True, None]},
            shared_skill_names=["search", "calendar"],
            webhook_url="https://example.com/hook",
            webhook_secret="s3cret",
            conversation_retention_days=30,
        )
    )
    await add(session, team)
    loaded = await reload(session, Team, team.id)
    assert loaded.slug == "beta-2"
    assert loaded.owner_id == user.id
    assert loaded.settings == {"locale": "fr", "limits": {"agents": 3}, "flags": [True, None]}
    assert loaded.shared_skill_names == ["search", "calendar"]
    assert (loaded.webhook_url, loaded.webhook_secret) == ("https://example.com/hook", "s3cret")
    assert loaded.conversation_retention_days == 30
    await assert_filled(session, loaded.created_at, loaded.updated_at)
    assert "webhook_secret" not in TeamRead.model_validate(loaded).model_dump()


async def test_team_membership(session: AsyncSession, team: Team) -> None:
    grace = await add(
        session,
        User.model_validate(
            UserCreate(email="grace@example.com", display_name="Grace", password="correct horse"),
            update={"password_hash": "not-a-real-hash"},
        ),
    )
    membership = TeamMembership.model_validate(
        TeamMembershipCreate(user_id=grace.id, team_id=team.id, role=UserRole.ADMIN)
    )
    await add(session, membership)
    loaded = await reload(session, TeamMembership, membership.id)
    assert (loaded.user_id, loaded.team_id) == (grace.id, team.id)
    assert loaded.role is UserRole.ADMIN
    await assert_filled(session, loaded.created_at)


async def test_agent_with_every_sub_config(session: AsyncSession, team: Team, user: User) -> None:
    personality = AgentPersonality(
        system_prompt_template="You are Orion. {memory_context}",
        tone="direct",
        verbosity="concise",
        formality="formal",
        language="de",
        traits={"curiosity": 0.9, "patience": 0.25},
        voice_examples=[
            VoiceExample(user_message="Hi?", agent_response="Guten Tag.", context="greeting")
        ],
        always_rules=["cite sources"],
        never_rules=["guess prices"],
        custom_instructions="Prefer tables.",
    )
    model = AgentModelConfig(
        model_name="openai/gpt-5",
        temperature=0.2,
        max_output_tokens=8000,
        provider_overrides={"reasoning": {"effort": "high"}},
    )
    memory = AgentMemoryConfig(
        token_budget=3000,
        retrieval_weights=RetrievalWeights(
            semantic=0.5, recency=0.1, importance=0.2, continuity=0.1, relationship=0.1
        ),
        auto_extract=False,
        auto_pin_preferences=False,
        summarize_interval=5,
        remember_commands=["merk dir"],
    )
    boundaries = AgentBoundaries(
        can_do=["research"],
        cannot_do=["pay"],
        escalates_to="kyra",
        max_autonomy="ask",
        allowed_domains=["example.com"],
        max_tool_calls_per_turn=3,
    )
    agent = Agent.model_validate(
        AgentCreate(
            team_id=team.id,
            name="Orion",
            slug="orion",
            tagline="Finds things",
            avatar_emoji="🔭",
            personality=personality,
            shared_skill_names=["search"],
            custom_skill_names=["astronomy", "maps"],
            disabled_skill_names=["maps"],
            model=model,
            memory=memory,
            boundaries=boundaries,
            status=AgentStatus.ACTIVE,
            created_by=user.id,
        )
    )
    await add(session, agent)
    loaded = await reload(session, Agent, agent.id)

    assert isinstance(loaded.personality, AgentPersonality)
    assert isinstance(loaded.model, AgentModelConfig)
    assert isinstance(loaded.memory, AgentMemoryConfig)
    assert isinstance(loaded.boundaries, AgentBoundaries)
    assert (loaded.personality, loaded.model, loaded.memory, loaded.boundaries) == (
        personality,
        model,
        memory,
        boundaries,
    )
    assert loaded.personality.voice_examples[0] == VoiceExample(
        user_message="Hi?", agent_response="Guten Tag.", context="greeting"
    )
    assert isinstance(loaded.memory.retrieval_weights, RetrievalWeights)
    assert loaded.memory.retrieval_weights.semantic == 0.5
    assert (loaded.name, loaded.slug, loaded.tagline, loaded.avatar_emoji) == (
        "Orion",
        "orion",
        "Finds things",
        "🔭",
    )
    assert loaded.shared_skill_names == ["search"]
    assert loaded.custom_skill_names == ["astronomy", "maps"]
    assert loaded.disabled_skill_names == ["maps"]
    assert loaded.status is AgentStatus.ACTIVE
    assert (loaded.team_id, loaded.created_by) == (team.id, user.id)
    # Generated columns.
    assert loaded.model_name == "openai/gpt-5"
    assert loaded.personality_prompt == "You are Orion. {memory_context}"
    await assert_filled(session, loaded.created_at, loaded.updated_at)


async def test_agent_sub_configs_are_stored_as_json_objects(
    session: AsyncSession, agent: Agent
) -> None:
    row = (
        await session.exec(
            text(
                "SELECT jsonb_typeof(personality), model_config ->> 'model_name',"
                " (memory_config -> 'retrieval_weights' ->> 'semantic')::float,"
                " boundaries ->> 'max_autonomy' FROM agent WHERE id = :id"
            ),
            params={"id": agent.id},
        )
    ).one()
    assert tuple(row) == ("object", "anthropic/claude-sonnet-4.5", 0.35, "execute")


async def test_conversation(session: AsyncSession, team: Team, agent: Agent, user: User) -> None:
    conversation = Conversation.model_validate(
        ConversationCreate(
            team_id=team.id,
            agent_id=agent.id,
            user_id=user.id,
            title="Plans",
            status=ConversationStatus.CLOSED,
            summary="We made plans.",
            metadata_json={"channel": "slack", "thread": {"ts": 1.5}},
        )
    )
    await add(session, conversation)
    loaded = await reload(session, Conversation, conversation.id)
    assert (loaded.team_id, loaded.agent_id, loaded.user_id) == (team.id, agent.id, user.id)
    assert (loaded.title, loaded.summary) == ("Plans", "We made plans.")
    assert loaded.status is ConversationStatus.CLOSED
    assert loaded.metadata_json == {"channel": "slack", "thread": {"ts": 1.5}}
    assert loaded.message_count == loaded.token_count == 0
    assert loaded.total_input_tokens == loaded.total_output_tokens == 0
    await assert_filled(session, loaded.last_message_at, loaded.created_at, loaded.updated_at)


async def test_message(session: AsyncSession, conversation: Conversation, agent: Agent) -> None:
    message = Message.model_validate(
        MessageCreate(
            agent_id=agent.id,
            role=MessageRole.ASSISTANT,
            content="Let me look.",
            tool_calls=[{"id": "call_1", "name": "search", "arguments": {"q": "moon"}}],
            tool_results={"call_1": ["a", "b"]},
            token_count=42,
            model="anthropic/claude-sonnet-4.5",
            feedback_rating="positive",
            feedback_comment="Useful",
        ),
        update={"team_id": conversation.team_id, "conversation_id": conversation.id},
    )
    await add(session, message)
    loaded = await reload(session, Message, message.id)
    assert (loaded.team_id, loaded.conversation_id) == (conversation.team_id, conversation.id)
    assert loaded.agent_id == agent.id
    assert loaded.role is MessageRole.ASSISTANT
    assert loaded.content == "Let me look."
    assert loaded.tool_calls == [{"id": "call_1", "name": "search", "arguments": {"q": "moon"}}]
    assert loaded.tool_results == {"call_1": ["a", "b"]}
    assert (loaded.token_count, loaded.model) == (42, "anthropic/claude-sonnet-4.5")
    assert (loaded.feedback_rating, loaded.feedback_comment) == ("positive", "Useful")
    assert loaded.created_at is not None
    assert loaded.created_at >= await scalar(session, "SELECT now()")


async def test_memory(
    session: AsyncSession, team: Team, agent: Agent, user: User, conversation: Conversation
) -> None:
    embedding = unit_vector(3, 1535)
    embedding[7] = -0.25
    message_ids = [uuid.uuid4(), uuid.uuid4()]
    other = await add(
        session,
        Memory.model_validate(
            MemoryCreate(team_id=team.id, memory_type=MemoryType.SEMANTIC, content="Other")
        ),
    )
    expires_at = datetime(2030, 5, 17, 8, 30, tzinfo=UTC)
    memory = Memory.model_validate(
        MemoryCreate(
            team_id=team.id,
            agent_id=agent.id,
            user_id=user.id,
            memory_type=MemoryType.USER_PROFILE,
            content="Ada prefers tea.",
            subject="Ada",
            embedding=embedding,
            importance=8,
            confidence=0.75,
            is_pinned=True,
            source_type=MemorySource.EXPLICIT,
            source_conversation_id=conversation.id,
            source_message_ids=message_ids,
            extraction_model="small-model",
            contradicts=[other.id],
            related_to=[other.id, message_ids[0]],
            metadata_json={"origin": {"kind": "chat"}, "score": 0.5},
            tier=MemoryTier.HOT,
            expires_at=expires_at,
            tags=["ignored-by-the-table"],
        )
    )
    await add(session, memory)
    loaded = await reload(session, Memory, memory.id)

    assert loaded.embedding == embedding
    assert isinstance(loaded.embedding, list)
    assert len(loaded.embedding) == 1536
    assert (loaded.team_id, loaded.agent_id, loaded.user_id) == (team.id, agent.id, user.id)
    assert loaded.memory_type is MemoryType.USER_PROFILE
    assert loaded.source_type is MemorySource.EXPLICIT
    assert loaded.tier is MemoryTier.HOT
    assert loaded.status is MemoryStatus.ACTIVE
    assert (loaded.content, loaded.subject) == ("Ada prefers tea.", "Ada")
    assert (loaded.importance, loaded.confidence, loaded.is_pinned) == (8, 0.75, True)
    assert loaded.source_conversation_id == conversation.id
    assert loaded.source_message_ids == message_ids
    assert loaded.contradicts == [other.id]
    assert loaded.related_to == [other.id, message_ids[0]]
    assert loaded.extraction_model == "small-model"
    assert loaded.metadata_json == {"origin": {"kind": "chat"}, "score": 0.5}
    assert loaded.expires_at == expires_at
    assert (loaded.access_count, loaded.version, loaded.superseded_by) == (0, 1, None)
    await assert_filled(session, loaded.created_at, loaded.updated_at, loaded.last_accessed_at)


async def test_memory_defaults(session: AsyncSession, team: Team) -> None:
    memory = Memory.model_validate(
        MemoryCreate(team_id=team.id, memory_type=MemoryType.EPISODIC, content="It rained.")
    )
    await add(session, memory)
    loaded = await reload(session, Memory, memory.id)
    assert loaded.status is MemoryStatus.ACTIVE
    assert loaded.tier is MemoryTier.WARM
    assert loaded.source_type is MemorySource.EXTRACTION
    assert (loaded.importance, loaded.confidence, loaded.is_pinned) == (5, 1.0, False)
    assert (loaded.embedding, loaded.source_message_ids, loaded.expires_at) == (None, None, None)
    assert loaded.metadata_json == {}


async def test_memory_log(session: AsyncSession, conversation: Conversation) -> None:
    memory_id, related = uuid.uuid4(), [uuid.uuid4(), uuid.uuid4()]
    entry = MemoryLog.model_validate(
        MemoryLogCreate(
            memory_id=memory_id,
            team_id=conversation.team_id,
            action="merged",
            old_content="a",
            new_content="a and b",
            old_importance=3,
            new_importance=6,
            old_tier="cold",
            new_tier="hot",
            old_status="active",
            new_status="active",
            changed_by="consolidation",
            reason="duplicates",
            conversation_id=conversation.id,
            related_memory_ids=related,
        )
    )
    await add(session, entry)
    loaded = await reload(session, MemoryLog, entry.id)
    assert loaded.model_dump(exclude={"id", "created_at"}) == entry.model_dump(
        exclude={"id", "created_at"}
    )
    assert loaded.related_memory_ids == related
    await assert_filled(session, loaded.created_at)


async def test_memory_tag(session: AsyncSession, team: Team) -> None:
    memory = await add(
        session,
        Memory.model_validate(
            MemoryCreate(team_id=team.id, memory_type=MemoryType.SEMANTIC, content="Tea")
        ),
    )
    tag = MemoryTag.model_validate(
        MemoryTagCreate(team_id=team.id, memory_id=memory.id, tag="  drinks ")
    )
    await add(session, tag)
    loaded = await reload(session, MemoryTag, tag.id)
    assert (loaded.memory_id, loaded.tag) == (memory.id, "drinks")
    await assert_filled(session, loaded.created_at)


# Through raw SQL, only the required columns


async def test_raw_sql_rows_with_only_required_columns_load_through_the_models(
    session: AsyncSession,
) -> None:
    user_id = await scalar(
        session,
        """INSERT INTO "user" (email, password_hash, display_name)
           VALUES ('raw@example.com', 'h', 'Raw') RETURNING id""",
    )
    team_id = await scalar(
        session,
        "INSERT INTO team (name, slug, owner_id) VALUES ('Raw', 'raw', :u) RETURNING id",
        u=user_id,
    )
    membership_id = await scalar(
        session,
        "INSERT INTO team_membership (user_id, team_id) VALUES (:u, :t) RETURNING id",
        u=user_id,
        t=team_id,
    )
    agent_id = await scalar(
        session,
        "INSERT INTO agent (team_id, name, slug) VALUES (:t, 'Raw', 'raw') RETURNING id",
        t=team_id,
    )
    conversation_id = await scalar(
        session,
        "INSERT INTO conversation (team_id, agent_id, user_id) VALUES (:t, :a, :u) RETURNING id",
        t=team_id,
        a=agent_id,
        u=user_id,
    )
    message_id = await scalar(
        session,
        """INSERT INTO message (team_id, conversation_id, role, content)
           VALUES (:t, :c, 'user', 'hi') RETURNING id""",
        t=team_id,
        c=conversation_id,
    )
    memory_id = await scalar(
        session,
        """INSERT INTO memory (team_id, memory_type, content)
           VALUES (:t, 'semantic', 'fact') RETURNING id""",
        t=team_id,
    )
    log_id = await scalar(
        session,
        """INSERT INTO memory_log (team_id, memory_id, action, changed_by)
           VALUES (:t, :m, 'note', 'ops') RETURNING id""",
        t=team_id,
        m=memory_id,
    )
    tag_id = await scalar(
        session,
        "INSERT INTO memory_tag (team_id, memory_id, tag) VALUES (:t, :m, 'facts') RETURNING id",
        t=team_id,
        m=memory_id,
    )

    user = await reload(session, User, user_id)
    assert user.is_active is True
    await assert_filled(session, user.created_at, user.updated_at)

    team = await reload(session, Team, team_id)
    assert (team.settings, team.shared_skill_names) == ({}, [])
    assert (team.webhook_url, team.webhook_secret, team.conversation_retention_days) == (
        None,
        None,
        90,
    )

    membership = await reload(session, TeamMembership, membership_id)
    assert membership.role is UserRole.MEMBER

    conversation = await reload(session, Conversation, conversation_id)
    assert conversation.status is ConversationStatus.ACTIVE
    assert conversation.metadata_json == {}
    assert (conversation.message_count, conversation.token_count) == (1, 0)

    message = await reload(session, Message, message_id)
    assert message.role is MessageRole.USER
    assert (message.token_count, message.tool_calls, message.feedback_rating) == (None, None, None)

    memory = await reload(session, Memory, memory_id)
    assert memory.memory_type is MemoryType.SEMANTIC
    assert (memory.status, memory.tier, memory.source_type) == (
        MemoryStatus.ACTIVE,
        MemoryTier.WARM,
        MemorySource.EXTRACTION,
    )
    assert (memory.importance, memory.confidence, memory.access_count, memory.version) == (
        5,
        1.0,
        0,
        1,
    )
    assert (memory.is_pinned, memory.metadata_json, memory.embedding) == (False, {}, None)
    await assert_filled(session, memory.created_at, memory.updated_at, memory.last_accessed_at)

    log = await reload(session, MemoryLog, log_id)
    assert (log.memory_id, log.action, log.changed_by) == (memory_id, "note", "ops")
    assert (log.new_content, log.reason, log.related_memory_ids) == (None, None, None)
    await assert_filled(session, log.created_at)

    tag = await reload(session, MemoryTag, tag_id)
    assert (tag.memory_id, tag.tag) == (memory_id, "facts")

    agent = await reload(session, Agent, agent_id)  # sub-configs: see the next test
    assert agent.status is AgentStatus.DRAFT


async def test_agent_server_defaults_load_as_typed_sub_configs(
    session: AsyncSession, team: Team
) -> None:
    agent_id = await scalar(
        session,
        "INSERT INTO agent (team_id, name, slug) VALUES (:t, 'Bare', 'bare') RETURNING id",
        t=team.id,
    )
    agent = await reload(session, Agent, agent_id)
    assert isinstance(agent.personality, AgentPersonality)
    assert isinstance(agent.model, AgentModelConfig)
    assert isinstance(agent.memory, AgentMemoryConfig)
    assert isinstance(agent.boundaries, AgentBoundaries)
    assert agent.personality == AgentPersonality(system_prompt_template="")
    assert (agent.model, agent.memory, agent.boundaries) == (
        AgentModelConfig(),
        AgentMemoryConfig(),
        AgentBoundaries(),
    )
    assert (agent.personality.tone, agent.personality.language) == ("friendly", "en")
    assert agent.model.model_name == "anthropic/claude-sonnet-4.5"
    assert (agent.model.temperature, agent.model.max_output_tokens) == (0.7, 4096)
    assert agent.memory.retrieval_weights.semantic == 0.35
    assert agent.memory.retrieval_weights == RetrievalWeights()
    assert agent.memory.remember_commands == [
        "remember this",
        "don't forget",
        "keep in mind",
        "note that",
    ]
    assert (agent.boundaries.max_autonomy, agent.boundaries.escalates_to) == ("execute", None)
    assert agent.boundaries.max_tool_calls_per_turn == 10
    assert agent.status is AgentStatus.DRAFT
    assert (agent.tagline, agent.avatar_emoji) == ("", "")
    assert (agent.shared_skill_names, agent.custom_skill_names, agent.disabled_skill_names) == (
        [],
        [],
        [],
    )
    assert (agent.model_name, agent.personality_prompt) == ("anthropic/claude-sonnet-4.5", "")


# Read models built from loaded rows


async def test_memory_read_from_a_loaded_row(session: AsyncSession, team: Team) -> None:
    memory = Memory.model_validate(
        MemoryCreate(
            team_id=team.id,
            memory_type=MemoryType.PROCEDURAL,
            content="Deploy on Tuesdays.",
            embedding=unit_vector(0),
            metadata_json={"k": "v"},
        )
    )
    await add(session, memory)
    read = MemoryRead.model_validate(await reload(session, Memory, memory.id))
    assert read.id == memory.id
    assert read.memory_type is MemoryType.PROCEDURAL
    assert read.content == "Deploy on Tuesdays."
    assert read.embedding == unit_vector(0)
    assert read.metadata_json == {"k": "v"}
    assert (read.status, read.tier, read.importance) == (MemoryStatus.ACTIVE, MemoryTier.WARM, 5)
    assert (read.access_count, read.version, read.superseded_by) == (0, 1, None)
    await assert_filled(session, read.created_at, read.updated_at, read.last_accessed_at)


async def test_agent_dna_from_a_loaded_row(session: AsyncSession, team: Team) -> None:
    agent = Agent.model_validate(
        AgentCreate(
            team_id=team.id,
            name="Vega",
            slug="vega",
            personality=AgentPersonality(system_prompt_template="You are Vega."),
            shared_skill_names=["search", "email", "calendar"],
            custom_skill_names=["email", "poetry", "search"],
            disabled_skill_names=["calendar"],
            memory=AgentMemoryConfig(retrieval_weights=RetrievalWeights(recency=0.4)),
        )
    )
    await add(session, agent)
    dna = AgentDNA.model_validate(await reload(session, Agent, agent.id))
    assert dna.id == agent.id
    assert dna.effective_skills == ["search", "email", "poetry"]
    assert dna.model_dump()["effective_skills"] == ["search", "email", "poetry"]
    assert dna.personality.system_prompt_template == "You are Vega."
    assert dna.memory.retrieval_weights.recency == 0.4
    assert dna.model.model_name == "anthropic/claude-sonnet-4.5"
    assert dna.status is AgentStatus.DRAFT
    await assert_filled(session, dna.created_at, dna.updated_at)


# Constraints


async def test_email_is_unique_regardless_of_case(session: AsyncSession, user: User) -> None:
    twin = User.model_validate(
        UserCreate(email="ADA@Example.com", display_name="Ada 2", password="another horse"),
        update={"password_hash": "x"},
    )
    assert twin.email.startswith("ADA@")
    async with rejected(session, "uq_user_email"):
        session.add(twin)
    async with rejected(session, "uq_user_email"):
        await session.exec(
            text(
                """INSERT INTO "user" (email, password_hash, display_name)
                   VALUES ('Ada@EXAMPLE.COM', 'h', 'Ada 3')"""
            )
        )
    assert await scalar(session, 'SELECT count(*) FROM "user"') == 1


@pytest.mark.parametrize("slug", ["Acme", "has space", "-lead", "trail-", "a", "under_score"])
async def test_bad_slugs_are_rejected_by_check(
    session: AsyncSession, user: User, team: Team, slug: str
) -> None:
    async with rejected(session, "ck_team_slug_format"):
        await session.exec(
            text("INSERT INTO team (name, slug, owner_id) VALUES ('X', :slug, :u)"),
            params={"slug": slug, "u": user.id},
        )
    async with rejected(session, "ck_agent_slug_format"):
        await session.exec(
            text("INSERT INTO agent (team_id, name, slug) VALUES (:t, 'X', :slug)"),
            params={"slug": slug, "t": team.id},
        )


async def test_good_slug_is_accepted(session: AsyncSession, user: User) -> None:
    await session.exec(
        text("INSERT INTO team (name, slug, owner_id) VALUES ('X', 'a1-b2', :u)"),
        params={"u": user.id},
    )
    assert await scalar(session, "SELECT count(*) FROM team WHERE slug = 'a1-b2'") == 1


async def test_agent_slug_is_unique_within_a_team_only(
    session: AsyncSession, user: User, team: Team, agent: Agent
) -> None:
    def kyra(team_id: uuid.UUID) -> Agent:
        return Agent.model_validate(
            AgentCreate(
                team_id=team_id,
                name="Kyra",
                slug=agent.slug,
                personality=AgentPersonality(system_prompt_template=""),
            )
        )

    async with rejected(session, "uq_agent_team_slug"):
        session.add(kyra(team.id))
    session.expunge_all()

    other_team = await add(
        session, Team.model_validate(TeamCreate(name="Other", slug="other", owner_id=user.id))
    )
    await add(session, kyra(other_team.id))
    assert await scalar(session, "SELECT count(*) FROM agent WHERE slug = 'kyra'") == 2


async def test_duplicate_team_slug_is_rejected(
    session: AsyncSession, user: User, team: Team
) -> None:
    async with rejected(session, "uq_team_slug"):
        session.add(Team.model_validate(TeamCreate(name="Acme 2", slug="acme", owner_id=user.id)))


async def test_duplicate_membership_is_rejected(
    session: AsyncSession, user: User, team: Team
) -> None:
    """The fixture user owns the fixture team, so is already its member."""
    async with rejected(session, "uq_team_membership"):
        session.add(
            TeamMembership.model_validate(
                TeamMembershipCreate(user_id=user.id, team_id=team.id, role=UserRole.VIEWER)
            )
        )


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("importance", 11, "ck_memory_importance"),
        ("importance", 0, "ck_memory_importance"),
        ("confidence", 1.5, "ck_memory_confidence"),
        ("confidence", -0.1, "ck_memory_confidence"),
    ],
)
async def test_memory_checks(
    session: AsyncSession, team: Team, column: str, value: float, constraint: str
) -> None:
    memory = await add(
        session,
        Memory.model_validate(
            MemoryCreate(team_id=team.id, memory_type=MemoryType.SEMANTIC, content="x")
        ),
    )
    async with rejected(session, constraint):
        await session.exec(
            text(f"UPDATE memory SET {column} = :value WHERE id = :id"),
            params={"id": memory.id, "value": value},
        )
    async with rejected(session, constraint):
        await session.exec(
            text(
                f"INSERT INTO memory (team_id, memory_type, content, {column})"
                " VALUES (:t, 'semantic', 'y', :value)"
            ),
            params={"t": team.id, "value": value},
        )


async def test_feedback_rating_check(session: AsyncSession, conversation: Conversation) -> None:
    async with rejected(session, "ck_message_feedback_rating"):
        await session.exec(
            text(
                "INSERT INTO message (team_id, conversation_id, role, content, feedback_rating)"
                " VALUES (:t, :c, 'assistant', 'ok', 'meh')"
            ),
            params={"t": conversation.team_id, "c": conversation.id},
        )


async def test_duplicate_tag_on_a_memory_is_rejected(session: AsyncSession, team: Team) -> None:
    memory = await add(
        session,
        Memory.model_validate(
            MemoryCreate(team_id=team.id, memory_type=MemoryType.SEMANTIC, content="x")
        ),
    )
    tag = MemoryTagCreate(team_id=team.id, memory_id=memory.id, tag="t")
    await add(session, MemoryTag.model_validate(tag))
    async with rejected(session, "uq_memory_tag"):
        session.add(MemoryTag.model_validate(tag))


async def test_deleting_a_team_cascades(
    session: AsyncSession,
    user: User,
    team: Team,
    agent: Agent,
    conversation: Conversation,
) -> None:
    """The fixture team keeps one row of each kind; the doomed team's rows all go."""

    async def populate(team_id: uuid.UUID, agent_id: uuid.UUID, conversation_id: uuid.UUID) -> None:
        # Assistant messages name the agent, which the team delete removes as well.
        for role, author in ((MessageRole.USER, None), (MessageRole.ASSISTANT, agent_id)):
            session.add(
                Message.model_validate(
                    MessageCreate(agent_id=author, role=role, content="m"),
                    update={"team_id": team_id, "conversation_id": conversation_id},
                )
            )
        memory = await add(
            session,
            Memory.model_validate(
                MemoryCreate(
                    team_id=team_id,
                    agent_id=agent_id,
                    user_id=user.id,
                    memory_type=MemoryType.EPISODIC,
                    content="m",
                    source_conversation_id=conversation_id,
                )
            ),
        )
        tag = MemoryTagCreate(team_id=team_id, memory_id=memory.id, tag="t")
        await add(session, MemoryTag.model_validate(tag))

    doomed = await add(
        session, Team.model_validate(TeamCreate(name="Doomed", slug="doomed", owner_id=user.id))
    )
    membership = TeamMembershipCreate(user_id=user.id, team_id=doomed.id)
    await add(session, TeamMembership.model_validate(membership))
    doomed_agent = await add(
        session,
        Agent.model_validate(
            AgentCreate(
                team_id=doomed.id,
                name="Kyra",
                slug="kyra",
                personality=AgentPersonality(system_prompt_template=""),
            )
        ),
    )
    doomed_conversation = await add(
        session,
        Conversation.model_validate(
            ConversationCreate(team_id=doomed.id, agent_id=doomed_agent.id, user_id=user.id)
        ),
    )
    await populate(team.id, agent.id, conversation.id)
    await populate(doomed.id, doomed_agent.id, doomed_conversation.id)
    doomed_memory_id = await scalar(
        session, "SELECT id FROM memory WHERE team_id = :t", t=doomed.id
    )

    tables = ("team", "team_membership", "agent", "conversation", "message", "memory", "memory_tag")

    async def counts() -> dict[str, int]:
        return {table: await scalar(session, f"SELECT count(*) FROM {table}") for table in tables}

    one_of_each = dict.fromkeys(tables, 1) | {"message": 2}
    assert await counts() == {table: 2 * count for table, count in one_of_each.items()}
    await session.exec(text("DELETE FROM team WHERE id = :id"), params={"id": doomed.id})
    assert await counts() == one_of_each
    assert await scalar(session, "SELECT team_id FROM agent") == team.id
    assert await scalar(session, "SELECT team_id FROM memory") == team.id
    assert await scalar(session, 'SELECT count(*) FROM "user"') == 1
    # The audit trail outlives the memory.
    deleted = "SELECT count(*) FROM memory_log WHERE memory_id = :id AND action = 'deleted'"
    assert await scalar(session, deleted, id=doomed_memory_id) == 1


# Vector search


async def test_cosine_distance_orders_nearest_first(session: AsyncSession, team: Team) -> None:
    embeddings = {"far": unit_vector(1), "near": unit_vector(0), "between": unit_vector(0, 1)}
    for content, embedding in embeddings.items():
        session.add(
            Memory.model_validate(
                MemoryCreate(
                    team_id=team.id,
                    memory_type=MemoryType.SEMANTIC,
                    content=content,
                    embedding=embedding,
                )
            )
        )
    await session.flush()
    session.expunge_all()
    query = unit_vector(0)
    query[2] = 0.1
    distance = Memory.embedding.cosine_distance(query)  # type: ignore[union-attr]
    rows = (
        await session.exec(
            select(Memory.content, distance).where(Memory.team_id == team.id).order_by(distance)
        )
    ).all()
    assert [content for content, _ in rows] == ["near", "between", "far"]
    assert rows[0][1] == pytest.approx(1 - 1 / 1.01**0.5, abs=1e-6)
    assert rows[2][1] == pytest.approx(1.0, abs=1e-6)
    ordered = (
        await session.exec(
            select(Memory).where(Memory.team_id == team.id).order_by(distance).limit(2)
        )
    ).all()
    assert [memory.content for memory in ordered] == ["near", "between"]
