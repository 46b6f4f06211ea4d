"""`retrieve` and `context_for`: each signal decides a ranking of its own, and the rules hold.

Every scenario sets two memories that differ in one signal's input, and makes the one the
signal favours slightly *less* relevant: so the test fails if the signal stops counting.
"""

import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentMemoryConfig,
    AgentPersonality,
    AgentRepository,
    AgentUpdate,
    Conversation,
    ConversationCreate,
    ConversationRepository,
    EmbeddingDimensionError,
    HashingEmbedder,
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    NotFoundError,
    RetrievalWeights,
    ScoredMemory,
    Team,
    TeamCreate,
    TeamRepository,
    User,
)
from skill_store.portability import ImportCounts, export_memories, import_memories
from skill_store.settings import get_settings

from ..support import unit_vector

NOW = datetime(2026, 6, 1, tzinfo=UTC)
QUERY = "where does Ada go climbing"
SEMANTIC_ONLY = RetrievalWeights(semantic=1, recency=0, importance=0, continuity=0, relationship=0)


def near(hot: int, weight: float) -> list[float]:
    """A vector at cosine `1 / sqrt(1 + weight²)` of `unit_vector(0)`."""
    vector = unit_vector(0)
    vector[hot] = weight
    return vector


@pytest.fixture
def memories(session: AsyncSession) -> MemoryRepository:
    return MemoryRepository(session, embedder=HashingEmbedder(get_settings().embedding_dimensions))


async def add(memories: MemoryRepository, team: Team, content: str, **fields: Any) -> uuid.UUID:
    data = {
        "team_id": team.id,
        "memory_type": MemoryType.EPISODIC,
        "content": content,
        "embedding": unit_vector(0),
        "created_at": NOW - timedelta(days=1),
        **fields,
    }
    return (await memories.create(MemoryCreate.model_validate(data))).id


async def anchor(memories: MemoryRepository, team: Team) -> None:
    """An unrelated memory: the least similar candidate, so others' scaled similarity is ~1."""
    await add(memories, team, "Ada climbs at the gym on Sundays", embedding=unit_vector(1))


async def retrieve(memories: MemoryRepository, team: Team, **options: Any) -> list[ScoredMemory]:
    arguments = {"team_id": team.id, "query_embedding": unit_vector(0), "now": NOW, **options}
    return await memories.retrieve(QUERY, **arguments)


def ids(found: list[ScoredMemory]) -> list[uuid.UUID]:
    return [memory.id for memory in found]


async def test_a_newer_memory_outranks_an_equally_relevant_older_one(
    memories: MemoryRepository, team: Team
) -> None:
    await anchor(memories, team)
    older = await add(memories, team, "Ada climbs at the crag", created_at=NOW - timedelta(90))
    newer = await add(memories, team, "Ada climbs at the crag", embedding=near(2, 0.05))

    found = await retrieve(memories, team)

    assert ids(found)[:2] == [newer, older]
    assert found[0].signals.recency > 0.9 > 0.2 > found[1].signals.recency
    assert ids(await retrieve(memories, team, weights=SEMANTIC_ONLY))[:2] == [older, newer]


async def test_recency_of_an_ancient_memory_is_zero_not_an_underflow(
    memories: MemoryRepository, team: Team
) -> None:
    await add(memories, team, "Ada climbs", created_at=datetime(1900, 1, 1, tzinfo=UTC))

    [found] = await retrieve(memories, team)

    assert 0 <= found.signals.recency < 1e-300


async def test_a_more_important_memory_outranks_an_equally_relevant_one(
    memories: MemoryRepository, team: Team
) -> None:
    await anchor(memories, team)
    trivial = await add(memories, team, "Ada climbs at the crag", importance=2)
    vital = await add(
        memories, team, "Ada climbs at the crag", importance=9, embedding=near(2, 0.05)
    )
    doubtful = await add(
        memories,
        team,
        "Ada climbs at the crag",
        importance=9,
        confidence=0.1,
        embedding=near(2, 0.05),
    )

    found = {memory.id: memory for memory in await retrieve(memories, team)}

    assert found[vital].score > found[trivial].score > found[doubtful].score
    assert found[vital].signals.importance == pytest.approx(0.9)
    assert found[doubtful].signals.importance == pytest.approx(0.09)


async def test_a_memory_of_the_current_conversation_outranks_one_of_another(
    memories: MemoryRepository,
    session: AsyncSession,
    team: Team,
    agent: Agent,
    user: User,
    conversation: Conversation,
) -> None:
    other = await ConversationRepository(session).create(
        ConversationCreate(team_id=team.id, agent_id=agent.id, user_id=user.id, title="Another")
    )
    await anchor(memories, team)
    elsewhere = await add(memories, team, "Ada climbs at the crag", source_conversation_id=other.id)
    here = await add(
        memories,
        team,
        "Ada climbs at the crag",
        source_conversation_id=conversation.id,
        embedding=near(2, 0.05),
    )

    found = await retrieve(memories, team, conversation_id=conversation.id)

    assert ids(found)[:2] == [here, elsewhere]
    assert [memory.signals.continuity for memory in found[:2]] == [1, 0]


async def test_the_same_users_recent_conversations_with_the_agent_count_half(
    memories: MemoryRepository,
    session: AsyncSession,
    team: Team,
    agent: Agent,
    user: User,
    conversation: Conversation,
) -> None:
    await ConversationRepository(session).add_message(
        conversation.id, {"role": "user", "content": "I climb"}, team_id=team.id
    )
    earlier = await add(memories, team, "Ada climbs", source_conversation_id=conversation.id)

    [found] = await memories.retrieve(
        QUERY,
        team_id=team.id,
        agent_id=agent.id,
        user_id=user.id,
        query_embedding=unit_vector(0),
    )

    assert found.id == earlier
    assert found.signals.continuity == pytest.approx(0.5, abs=0.01)


async def test_a_memory_linked_to_the_top_hit_is_pulled_in(
    memories: MemoryRepository, team: Team
) -> None:
    top = await add(memories, team, "Ada climbs at the crag every weekend")
    for hot in range(2, 6):
        await add(memories, team, "Ada climbs indoors", embedding=near(hot, 1.0))
    linked = await add(memories, team, "The crag is in Fontainebleau", embedding=unit_vector(9))
    await memories.relate(top, linked, team_id=team.id)
    weights = {"semantic": 0.3, "relationship": 0.7, "recency": 0, "importance": 0}

    found = await retrieve(memories, team, weights={**weights, "continuity": 0}, limit=3)

    assert ids(found)[:2] == [linked, top]
    assert found[0].signals.relationship == 1
    assert found[0].signals.semantic == 0


async def test_memories_about_the_same_subject_as_a_strong_hit_are_related(
    memories: MemoryRepository, team: Team
) -> None:
    await anchor(memories, team)
    await add(memories, team, "Ada climbs at the crag", subject="Outdoors")
    aside = await add(memories, team, "Ada climbs at the crag", embedding=near(2, 0.05))
    same = await add(
        memories, team, "Ada climbs at the crag", subject="outdoors", embedding=near(2, 0.05)
    )

    found = {memory.id: memory for memory in await retrieve(memories, team)}

    assert found[same].signals.relationship == 0.5
    assert found[aside].signals.relationship == 0
    assert found[same].score > found[aside].score


async def test_pinned_memories_come_first_whatever_their_score(
    memories: MemoryRepository, team: Team
) -> None:
    for hot in range(2, 6):
        await add(memories, team, "Ada climbs at the crag", embedding=near(hot, 0.1))
    pinned = await add(
        memories, team, "The office closes at six", embedding=unit_vector(9), is_pinned=True
    )

    found = await retrieve(memories, team, limit=3)

    assert found[0].id == pinned
    assert found[0].score < found[1].score
    assert len(found) == 3


async def test_superseded_archived_and_expired_memories_are_never_retrieved(
    memories: MemoryRepository, team: Team
) -> None:
    old = await add(memories, team, "Ada climbs at the crag")
    new = await memories.supersede(
        old,
        {
            "team_id": team.id,
            "memory_type": "episodic",
            "content": "Ada climbs at the gym",
            "embedding": near(2, 0.5),
        },
    )
    archived = await add(memories, team, "Ada climbs at the crag", is_pinned=True)
    await memories.archive(archived, team_id=team.id)
    await add(
        memories,
        team,
        "Ada climbs at the crag",
        is_pinned=True,
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
    )

    found = await retrieve(memories, team)

    assert ids(found) == [new.id]


async def test_weights_of_zero_turn_signals_off_exactly(
    memories: MemoryRepository, team: Team
) -> None:
    await anchor(memories, team)
    await add(memories, team, "Ada climbs at the crag", importance=9, created_at=NOW)
    await add(memories, team, "Ada climbs at the crag", importance=1, embedding=near(2, 0.3))

    found = await retrieve(memories, team, weights=SEMANTIC_ONLY)
    weights = RetrievalWeights(semantic=0.5, recency=0.3, importance=0.2, continuity=0)
    weighted = await retrieve(memories, team, weights=weights)

    assert [memory.score for memory in found] == [memory.signals.semantic for memory in found]
    for memory in weighted:
        signals = memory.signals
        expected = 0.5 * signals.semantic + 0.3 * signals.recency + 0.2 * signals.importance
        assert memory.score == pytest.approx(expected, abs=1e-12)


async def test_the_agents_weights_are_the_default(
    memories: MemoryRepository, session: AsyncSession, team: Team, agent: Agent
) -> None:
    config = AgentMemoryConfig(retrieval_weights=SEMANTIC_ONLY)
    await AgentRepository(session).update(
        agent.id, AgentUpdate(memory=config), team_id=agent.team_id
    )
    await add(memories, team, "Ada climbs at the crag", importance=9)

    [found] = await retrieve(memories, team, agent_id=agent.id)
    [default] = await retrieve(memories, team)

    assert found.score == found.signals.semantic == 1
    assert default.score == pytest.approx(0.35 + 0.2 * default.signals.recency + 0.2 * 0.9)


async def test_lexical_recall_finds_memories_the_vectors_miss(
    memories: MemoryRepository, team: Team, agent: Agent
) -> None:
    await anchor(memories, team)
    for hot in range(2, 6):
        await add(memories, team, "Grace sails", embedding=near(hot, 2.0), agent_id=agent.id)
    words = await add(
        memories,
        team,
        "Ada went climbing in Fontainebleau",
        embedding=near(9, 3.0),
        agent_id=agent.id,
    )

    found = await retrieve(memories, team, agent_id=agent.id, weights=SEMANTIC_ONLY, limit=1)
    nearest = await memories.search_by_embedding(unit_vector(0), team_id=team.id, limit=4)

    assert ids(found) == [words]  # "climbing" matches "climb", stemmed in English
    assert words not in [memory.id for memory in nearest]
    config = await memories.session.exec(  # type: ignore[call-overload]
        text("SELECT text_config::text FROM memory WHERE id = :id").bindparams(id=words)
    )
    assert config.one() == ("english",)


async def test_record_access_counts_what_is_returned_in_the_same_statement(
    memories: MemoryRepository, team: Team
) -> None:
    kept = await add(memories, team, "Ada climbs at the crag")

    await retrieve(memories, team)
    [found] = await retrieve(memories, team, record_access=True)
    again = await memories.get(kept, team_id=team.id)
    await memories.session.refresh(again)

    assert found.access_count == 0
    assert again.access_count == 1


async def test_the_token_budget_is_never_exceeded(
    memories: MemoryRepository, session: AsyncSession, team: Team, agent: Agent
) -> None:
    config = AgentMemoryConfig(token_budget=100)
    await AgentRepository(session).update(
        agent.id, AgentUpdate(memory=config), team_id=agent.team_id
    )
    for number in range(12):
        await add(memories, team, f"Ada climbs at crag {number} " + "and more " * number)

    context = await memories.context_for(QUERY, team_id=agent.team_id, agent_id=agent.id)
    packed = await memories.retrieve(
        QUERY, team_id=team.id, token_budget=30, query_embedding=unit_vector(0)
    )

    assert 0 < context.tokens <= 100
    assert context.tokens == memories.token_counter(context.text)
    assert context.text.splitlines() == [f"- {memory.content}" for memory in context.memories]
    assert len(context.memories) < 12
    assert memories.token_counter("\n".join(memory.content for memory in packed)) <= 30
    assert packed


async def test_a_hit_has_the_similarity_a_search_gives_it_and_none_without_a_vector(
    memories: MemoryRepository, team: Team
) -> None:
    close = await add(memories, team, "Ada climbs at the crag", embedding=near(2, 0.5))
    far = await add(memories, team, "Ada climbs in Fontainebleau", embedding=unit_vector(1))
    wordy = await add(memories, team, "Ada climbs", embedding=None)

    found = {memory.id: memory.similarity for memory in await retrieve(memories, team)}
    searched = await memories.search_by_embedding(unit_vector(0), team_id=team.id)

    assert found == {**{hit.id: hit.similarity for hit in searched}, wordy: None}
    assert found[close] == pytest.approx(1.25**-0.5, abs=1e-6)
    assert found[far] == pytest.approx(0.0, abs=1e-6)


async def test_context_for_reads_its_agent_in_the_team_and_its_overrides_win(
    memories: MemoryRepository, session: AsyncSession, team: Team, agent: Agent
) -> None:
    await AgentRepository(session).update(
        agent.id, AgentUpdate(memory=AgentMemoryConfig(token_budget=100)), team_id=team.id
    )
    for number in range(12):
        await add(memories, team, f"Ada climbs at crag {number} " + "and more " * number)
    other = await TeamRepository(session).create(
        TeamCreate(name="Other", slug="other", owner_id=team.owner_id)
    )
    options = {"query_embedding": unit_vector(0), "now": NOW}

    budgeted = await memories.context_for(QUERY, team_id=team.id, agent_id=agent.id, **options)
    smaller = await memories.context_for(
        QUERY, team_id=team.id, agent_id=agent.id, token_budget=30, **options
    )
    with pytest.raises(NotFoundError, match=f"agent {agent.id} does not exist"):
        await memories.context_for(QUERY, team_id=other.id, agent_id=agent.id, **options)

    assert 30 < budgeted.tokens <= 100  # the agent's budget
    assert 0 < smaller.tokens <= 30  # the caller's


async def test_context_for_counts_an_access_of_the_memories_it_keeps_only(
    memories: MemoryRepository, session: AsyncSession, team: Team, agent: Agent
) -> None:
    kept = await add(memories, team, "Ada climbs")
    left = await add(memories, team, "Ada climbs " + "at the crag " * 100, embedding=near(2, 0.1))

    context = await memories.context_for(
        QUERY, team_id=team.id, agent_id=agent.id, token_budget=10, record_access=True, now=NOW
    )
    counts = {
        memory.id: memory.access_count
        for memory in await memories.list(team_id=team.id)
        if memory.id in (kept, left)
    }

    assert [memory.id for memory in context.memories] == [kept]
    assert counts == {kept: 1, left: 0}


async def test_a_pluggable_token_counter(session: AsyncSession, team: Team, agent: Agent) -> None:
    words = MemoryRepository(
        session,
        embedder=HashingEmbedder(get_settings().embedding_dimensions),
        token_counter=lambda text: len(text.split()),
    )
    await add(words, team, "Ada climbs at the crag")

    context = await words.context_for(QUERY, team_id=agent.team_id, agent_id=agent.id)

    assert (context.tokens, context.text) == (6, "- Ada climbs at the crag")


async def test_bad_input_is_refused_before_any_sql(
    memories: MemoryRepository, session: AsyncSession, team: Team
) -> None:
    with pytest.raises(ValueError, match="query"):
        await memories.retrieve(" ", team_id=team.id)
    with pytest.raises(ValueError, match="limit"):
        await retrieve(memories, team, limit=0)
    with pytest.raises(ValueError, match="limit must be between 1 and 536,870,911"):
        await retrieve(memories, team, limit=2**31 // 4)  # 4 * limit candidates: no integer
    with pytest.raises(ValueError, match="token_budget"):
        await retrieve(memories, team, token_budget=0)
    with pytest.raises(ValidationError, match="semantic"):
        await retrieve(memories, team, weights={"semantic": 2})
    kept = await add(memories, team, "Ada climbs")
    with pytest.raises(EmbeddingDimensionError):
        await retrieve(memories, team, query_embedding=[1.0, 0.0], record_access=True)
    with pytest.raises(ValueError, match="finite"):
        await retrieve(memories, team, query_embedding=[math.nan] * 3)
    [found] = await retrieve(memories, team)  # the transaction is still usable
    assert (found.id, found.access_count) == (kept, 0)


async def test_created_at_dates_an_import_but_not_the_future(
    memories: MemoryRepository, team: Team
) -> None:
    then = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    created = await memories.get(await add(memories, team, "Ada", created_at=then), team_id=team.id)
    copied = await memories.add_many(
        [
            {"team_id": team.id, "memory_type": "episodic", "content": "Bo", "created_at": then},
            {"team_id": team.id, "memory_type": "episodic", "content": "Cy"},
        ]
    )
    dates = await memories.session.exec(  # type: ignore[call-overload]
        text(
            "SELECT content, created_at, last_accessed_at FROM memory WHERE content <> 'Ada'"
            " ORDER BY content"
        )
    )

    assert (created.created_at, created.last_accessed_at) == (then, then)
    assert copied == 2
    [bo, cy] = dates.all()
    assert bo[1:] == (then, then)
    assert cy[1] == cy[2] > then
    with pytest.raises(ValidationError, match="future"):
        MemoryCreate(
            team_id=team.id,
            memory_type=MemoryType.EPISODIC,
            content="Ada",
            created_at=datetime.now(UTC) + timedelta(days=1),
        )
    with pytest.raises(ValidationError, match="timezone"):
        MemoryCreate.model_validate(
            {
                "team_id": team.id,
                "memory_type": "episodic",
                "content": "A",
                "created_at": "2023-05-08T13:56:00",
            }
        )


async def test_the_audit_dates_an_imported_creation_by_its_created_at(
    memories: MemoryRepository, team: Team
) -> None:
    then = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    created = await add(memories, team, "Ada climbs", created_at=then)
    await memories.add_many(
        [{"team_id": team.id, "memory_type": "episodic", "content": "Bo", "created_at": then}]
    )
    [copied] = await memories.list(team_id=team.id, content="Bo")
    fresh = await add(memories, team, "Cy", created_at=None)

    for memory_id in (created, copied.id):
        [creation] = await memories.history(memory_id, team_id=team.id)
        assert (creation.action, creation.created_at) == ("created", then)
    assert await memories.content_at(created, then, team_id=team.id) == "Ada climbs"
    assert await memories.content_at(created, then - timedelta(seconds=1), team_id=team.id) is None
    # A memory dated by its own transaction is logged at the time of the change.
    [creation] = await memories.history(fresh, team_id=team.id)
    assert creation.created_at > (await memories.get(fresh, team_id=team.id)).created_at


async def test_an_unknown_language_indexes_words_as_they_are(
    memories: MemoryRepository, session: AsyncSession, team: Team, agent: Agent
) -> None:
    personality = AgentPersonality(system_prompt_template="{memory_context}", language="zz")
    await AgentRepository(session).update(
        agent.id, AgentUpdate(personality=personality), team_id=agent.team_id
    )
    memory = await add(memories, team, "Ada went climbing", agent_id=agent.id)

    stored = await session.exec(  # type: ignore[call-overload]
        text("SELECT text_config::text, search_text::text FROM memory WHERE id = :id").bindparams(
            id=memory
        )
    )

    assert stored.one() == ("simple", "'ada':1 'climbing':3 'went':2")


async def test_export_and_import_keep_created_at(
    memories: MemoryRepository, session: AsyncSession, team: Team, tmp_path: Path
) -> None:
    then = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    await add(memories, team, "Ada climbs", created_at=then)
    lines = [line async for line in export_memories(session, team.id)]
    file = tmp_path / "memories.jsonl"
    file.write_text("\n".join(lines) + "\n")
    other = await TeamRepository(session).create(
        TeamCreate(name="Other", slug="other", owner_id=team.owner_id)
    )

    counts = await import_memories(session, file, other.id, memories.embedder)
    [imported] = await memories.list(team_id=other.id)

    assert json.loads(lines[0])["created_at"].startswith("2023-05-08T13:56:00")
    assert counts == ImportCounts(added=1)
    assert imported.created_at == then


@pytest.mark.parametrize(
    "query", ["O'Brien's \\ back-to-back 'quoted' | & ! <-> :*", "the of and", "¿Qué?", "42"]
)
async def test_any_text_is_a_query(memories: MemoryRepository, team: Team, query: str) -> None:
    kept = await add(memories, team, "O'Brien's back-to-back \\ climbs, 42 of them")

    found = await memories.retrieve(query, team_id=team.id, query_embedding=unit_vector(0))

    assert ids(found) == [kept]
