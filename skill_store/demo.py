"""A small demo team: an owner, two agents with distinct AgentDNA, a conversation, memories."""

from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.database import get_session_factory, migrate
from skill_store.embeddings import Embedder
from skill_store.models import (
    Agent,
    AgentBoundaries,
    AgentCreate,
    AgentMemoryConfig,
    AgentModelConfig,
    AgentPersonality,
    AgentStatus,
    Conversation,
    ConversationCreate,
    Memory,
    MemoryCreate,
    MemoryLog,
    MemorySource,
    MemoryType,
    MessageCreate,
    MessageRole,
    RetrievalWeights,
    ScoredMemory,
    Team,
    TeamCreate,
    User,
    VoiceExample,
)
from skill_store.repositories import (
    AgentRepository,
    ConversationRepository,
    MemoryRepository,
    TeamRepository,
    UserRepository,
)

TEAM_SLUG = "demo"
OWNER_EMAIL = "ada@demo.example.com"
QUERY = "Does Ada drink coffee or green tea in the morning?"

KYRA: dict[str, Any] = dict(
    name="Kyra",
    slug="kyra",
    tagline="Your friendly companion",
    avatar_emoji="🌿",
    personality=AgentPersonality(
        system_prompt_template="You are Kyra, a warm companion. Known facts:\n{memory_context}",
        tone="friendly",
        verbosity="balanced",
        formality="informal",
        traits={"curious": 0.9, "empathetic": 0.8, "humorous": 0.6},
        voice_examples=[
            VoiceExample(
                user_message="Rough day.",
                agent_response="Oh no, I am sorry. Want to talk about it, or shall I distract you?",
                context="Comforting",
            )
        ],
        always_rules=["Greet Ada by name"],
        never_rules=["Never give medical advice"],
    ),
    custom_skill_names=["reminders", "small-talk"],
    memory=AgentMemoryConfig(token_budget=3000),
    status=AgentStatus.ACTIVE,
)
ATLAS: dict[str, Any] = dict(
    name="Atlas",
    slug="atlas",
    tagline="Terse data analyst",
    avatar_emoji="📊",
    personality=AgentPersonality(
        system_prompt_template="You are Atlas. Answer with numbers first.\n{memory_context}",
        tone="direct",
        verbosity="concise",
        formality="formal",
        traits={"analytical": 0.95, "patient": 0.4},
        never_rules=["Never speculate without data"],
    ),
    custom_skill_names=["sql", "charts"],
    disabled_skill_names=["small-talk"],
    model=AgentModelConfig(temperature=0.2, max_output_tokens=2000),
    memory=AgentMemoryConfig(
        retrieval_weights=RetrievalWeights(semantic=0.5, recency=0.1, importance=0.3)
    ),
    boundaries=AgentBoundaries(max_autonomy="ask", cannot_do=["send email"]),
    status=AgentStatus.ACTIVE,
)

CONVERSATION = [
    (MessageRole.USER, "Morning Kyra! Remember this: I switched to green tea, no more coffee."),
    (MessageRole.ASSISTANT, "Good morning, Ada! Green tea it is. Sencha or matcha?"),
    (MessageRole.USER, "Sencha, and I'm off to the climbing gym tonight."),
    (MessageRole.ASSISTANT, "Have fun climbing! Shall I remind you to pack your chalk bag?"),
    (MessageRole.USER, "Yes please, at five."),
    (MessageRole.ASSISTANT, "Done: a reminder at 17:00 to pack your chalk bag."),
]

# (type, content, tags, importance, agent slug or None, about the owner)
MEMORIES: list[tuple[MemoryType, str, list[str], int, str | None, bool]] = [
    (
        MemoryType.USER_PROFILE,
        "Ada drinks her coffee black every morning",
        ["drinks"],
        6,
        None,
        True,
    ),
    (MemoryType.USER_PROFILE, "Ada lives in Lisbon", ["home"], 5, None, True),
    (MemoryType.USER_PROFILE, "Ada works as a data engineer", ["work"], 6, None, True),
    (MemoryType.USER_PROFILE, "Ada is vegetarian", ["food"], 8, None, True),
    (MemoryType.USER_PROFILE, "Ada is allergic to peanuts", ["food", "health"], 10, None, True),
    (MemoryType.SEMANTIC, "Ada likes sencha green tea more than matcha", ["drinks"], 5, None, True),
    (MemoryType.SEMANTIC, "Ada prefers short answers in the morning", ["style"], 7, None, True),
    (MemoryType.SEMANTIC, "Ada's climbing gym is in Alcântara", ["sport"], 3, None, True),
    (MemoryType.SEMANTIC, "Ada reads science fiction, mostly Le Guin", ["books"], 4, None, True),
    (MemoryType.SEMANTIC, "Ada's cat is called Pixel", ["pets"], 5, None, True),
    (MemoryType.EPISODIC, "Ada climbed her first 6b route last Friday", ["sport"], 5, "kyra", True),
    (
        MemoryType.EPISODIC,
        "Ada asked for a chalk bag reminder at five",
        ["reminders"],
        4,
        "kyra",
        True,
    ),
    (MemoryType.EPISODIC, "Ada was stressed about the quarterly report", ["work"], 5, "kyra", True),
    (MemoryType.EPISODIC, "Atlas charted weekly signups for Ada", ["work"], 4, "atlas", True),
    (MemoryType.EPISODIC, "Ada celebrated her birthday on 3 March", ["dates"], 7, None, True),
    (
        MemoryType.PROCEDURAL,
        "To book the climbing gym, use the app before noon",
        ["sport"],
        4,
        None,
        False,
    ),
    (MemoryType.PROCEDURAL, "Weekly reports are due on Friday at 16:00", ["work"], 7, None, False),
    (
        MemoryType.PROCEDURAL,
        "Query the warehouse with read-only credentials",
        ["work"],
        8,
        "atlas",
        False,
    ),
    (
        MemoryType.PROCEDURAL,
        "Round revenue figures to thousands in charts",
        ["work"],
        5,
        "atlas",
        False,
    ),
    (MemoryType.AGENT_PRIVATE, "Ada responds well to light humour", ["style"], 6, "kyra", True),
    (MemoryType.AGENT_PRIVATE, "Avoid talking about work after 20:00", ["style"], 6, "kyra", True),
    (MemoryType.AGENT_PRIVATE, "Ada trusts numbers over anecdotes", ["style"], 6, "atlas", True),
    (MemoryType.SHARED, "The team standup is at 9:30 on weekdays", ["work"], 6, None, False),
    (MemoryType.SHARED, "The office closes on public holidays", ["work"], 3, None, False),
    (MemoryType.SHARED, "The team's favourite cafe serves oat milk", ["drinks"], 2, None, False),
    (MemoryType.IDENTITY, "Kyra is a warm companion who remembers details", [], 9, "kyra", False),
    (MemoryType.IDENTITY, "Atlas is a terse analyst who shows data first", [], 9, "atlas", False),
    (
        MemoryType.SEMANTIC,
        "Ada drinks water with lemon after climbing",
        ["drinks", "sport"],
        3,
        None,
        True,
    ),
    (MemoryType.SEMANTIC, "Ada dislikes phone calls before ten", ["style"], 5, None, True),
    (MemoryType.SEMANTIC, "Ada is learning Portuguese", ["learning"], 4, None, True),
]
SUPERSEDED = "Ada drinks her coffee black every morning"
SUCCESSOR = "Ada switched from coffee to sencha green tea in the morning"


@dataclass
class DemoReport:
    """What `build_demo` created and found."""

    team: Team
    owner: User
    agents: list[Agent]
    conversation: Conversation
    memories: int
    query: str
    hits: list[ScoredMemory]
    successor: Memory
    history: list[MemoryLog]


async def find_demo_team(session: AsyncSession) -> Team | None:
    """The demo team, if it exists."""
    return await TeamRepository(session).get_by_slug(TEAM_SLUG)


async def ensure_demo(engine: AsyncEngine, embedder: Embedder) -> Team:
    """Upgrade the schema, and build and commit the demo team unless it exists.

    Args:
        engine: The database's engine.
        embedder: Embeds the memories and the query, if the team is built.

    Returns:
        The demo team.
    """
    await migrate(engine)
    async with get_session_factory(engine)() as session:
        team = await find_demo_team(session)
        if team is None:
            team = (await build_demo(session, embedder)).team
            await session.commit()
        return team


async def remove_demo(session: AsyncSession) -> None:
    """Delete the demo team (its agents, conversations and memories go with it) and its owner."""
    team = await find_demo_team(session)
    if team is not None:
        await TeamRepository(session).delete(team.id)
    users = UserRepository(session)
    owner = await users.get_by_email(OWNER_EMAIL)
    if owner is not None:
        await users.delete(owner.id)


async def build_demo(session: AsyncSession, embedder: Embedder) -> DemoReport:
    """Create the demo team and its data, search its memories and supersede one.

    Args:
        session: A session whose transaction the caller commits.
        embedder: Embeds the memories and the query.

    Returns:
        What was created and found.
    """
    owner = await UserRepository(session).create(
        {"email": OWNER_EMAIL, "display_name": "Ada", "password": "demo-password"}
    )
    team = await TeamRepository(session).create(
        TeamCreate(
            name="Demo",
            slug=TEAM_SLUG,
            owner_id=owner.id,
            shared_skill_names=["web-search", "calendar", "small-talk"],
        )
    )
    agent_repository = AgentRepository(session)
    agents = [
        await agent_repository.create(AgentCreate(team_id=team.id, created_by=owner.id, **spec))
        for spec in (KYRA, ATLAS)
    ]
    by_slug = {agent.slug: agent for agent in agents}

    conversations = ConversationRepository(session)
    conversation = await conversations.create(
        ConversationCreate(
            team_id=team.id, agent_id=by_slug["kyra"].id, user_id=owner.id, title="Good morning"
        )
    )
    for role, content in CONVERSATION:
        author = by_slug["kyra"].id if role == MessageRole.ASSISTANT else None
        await conversations.add_message(
            conversation.id,
            MessageCreate(
                role=role, content=content, agent_id=author, token_count=len(content) // 4
            ),
            team_id=team.id,
        )

    memories = MemoryRepository(session, embedder=embedder)
    vectors = await embedder.embed([content for _, content, *_ in MEMORIES])
    created: dict[str, Memory] = {}
    for (memory_type, content, tags, importance, agent, about_owner), vector in zip(
        MEMORIES, vectors, strict=True
    ):
        created[content] = await memories.create(
            MemoryCreate(
                team_id=team.id,
                agent_id=by_slug[agent].id if agent else None,
                user_id=owner.id if about_owner else None,
                memory_type=memory_type,
                content=content,
                embedding=vector,
                embedding_model=embedder.model,
                importance=importance,
                tags=tags,
                source_type=MemorySource.SYSTEM,
            ),
            actor="demo",
        )

    [successor_vector] = await embedder.embed([SUCCESSOR])
    old = created[SUPERSEDED]
    successor = await memories.supersede(
        old.id,
        MemoryCreate(
            team_id=team.id,
            user_id=owner.id,
            memory_type=old.memory_type,
            content=SUCCESSOR,
            embedding=successor_vector,
            embedding_model=embedder.model,
            importance=old.importance,
            tags=["drinks"],
            source_type=MemorySource.EXPLICIT,
            source_conversation_id=conversation.id,
        ),
        reason="Ada said she switched to green tea",
        actor="kyra",
    )
    hits = await memories.retrieve(
        QUERY, team_id=team.id, agent_id=by_slug["kyra"].id, user_id=owner.id, limit=5
    )
    await session.refresh(conversation)
    return DemoReport(
        team=team,
        owner=owner,
        agents=agents,
        conversation=conversation,
        memories=len(MEMORIES) + 1,
        query=QUERY,
        hits=hits,
        successor=successor,
        history=list(await memories.history(old.id, team_id=team.id)),
    )
