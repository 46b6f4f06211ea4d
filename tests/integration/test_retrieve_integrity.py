"""`retrieve` and `recall` under hostile use: what they count, read and return stays right.

Each test builds the case that broke on purpose: many calls on one connection under a
generic plan, a query of thousands of words, a pinned memory more relevant than every
candidate found, memories a call can never return, a team that speaks another language,
and one memory id in two teams.
"""

import random
import string
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import DBAPIError
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    AgentCreate,
    AgentPersonality,
    AgentRepository,
    Conversation,
    EmbeddingModelError,
    HashingEmbedder,
    MemoryRepository,
    MemoryType,
    Team,
    TeamCreate,
    TeamRepository,
    User,
)
from skill_store.repositories.memory import MAX_QUERY_WORDS, RETRIEVAL_DEPTH
from skill_store.settings import get_settings

from ..support import run, unit_vector
from .test_retrieve import NOW, QUERY, SEMANTIC_ONLY, add, ids, near, retrieve


@pytest.fixture
def memories(session: AsyncSession) -> MemoryRepository:
    return MemoryRepository(session, embedder=HashingEmbedder(get_settings().embedding_dimensions))


def random_words(count: int) -> set[str]:
    """`count` distinct made-up words of five letters (stemmed unlike their plain form)."""
    rng = random.Random(15)
    words: set[str] = set()
    while len(words) < count:
        word = "".join(rng.choices(string.ascii_lowercase, k=5))
        if word != "crags":
            words.add(word)
    return words


async def access_counts(session: AsyncSession, memory_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    rows = await run(
        session, "SELECT id, access_count FROM memory WHERE id = ANY (:ids)", ids=memory_ids
    )
    return {memory_id: count for memory_id, count in rows.all()}


@pytest.mark.parametrize("plan_cache_mode", ["auto", "force_generic_plan"])
async def test_every_call_counts_one_access_of_each_memory_it_returns(
    memories: MemoryRepository, session: AsyncSession, team: Team, plan_cache_mode: str
) -> None:
    await run(session, f"SET LOCAL plan_cache_mode = {plan_cache_mode}")
    stored = [
        await add(memories, team, f"Ada climbs at crag {n}", embedding=near(2 + n, 0.1 * n))
        for n in range(8)
    ]
    returned: Counter[uuid.UUID] = Counter()

    for _call in range(12):  # a generic plan comes after five calls on a connection
        found = await retrieve(memories, team, limit=5, weights=SEMANTIC_ONLY, record_access=True)
        assert len(found) == 5
        returned.update(memory.id for memory in found)

    assert await access_counts(session, stored) == {n: returned[n] for n in stored}
    assert sorted(returned.values()) == [12] * 5


async def test_under_a_token_budget_only_the_memories_kept_count_as_accessed(
    memories: MemoryRepository, session: AsyncSession, team: Team
) -> None:
    stored = [
        await add(
            memories,
            team,
            f"Ada climbs at crag {n}" + " and more" * 10 * n,
            embedding=near(2 + n, 0.1 * n),
        )
        for n in range(4)
    ]

    kept = await retrieve(
        memories, team, token_budget=20, weights=SEMANTIC_ONLY, record_access=True
    )

    assert ids(kept) == stored[:1]
    assert await access_counts(session, stored) == {n: int(n == stored[0]) for n in stored}


async def test_a_query_of_fifteen_thousand_words_is_read_by_the_words_the_team_holds(
    memories: MemoryRepository, team: Team
) -> None:
    for number in range(5):
        await add(memories, team, f"Grace sails boat {number}")
    crag = await add(memories, team, "Ada climbs at the crag")
    noise = " ".join(random_words(15_000))

    found = await memories.retrieve(
        f"{noise} crag",
        team_id=team.id,
        query_embedding=unit_vector(1),
        weights=SEMANTIC_ONLY,
        now=NOW,
    )

    assert found[0].id == crag
    assert found[0].signals.semantic == 1


async def test_of_a_long_query_the_words_rarest_in_the_team_count(
    memories: MemoryRepository, team: Team
) -> None:
    common = " ".join(f"w{number}q" for number in range(MAX_QUERY_WORDS + 6))
    for number in range(5):
        await add(memories, team, f"{common} boat {number}")
    zebra = await add(memories, team, f"{common} zebra")

    found = await memories.retrieve(
        f"{common} zebra",
        team_id=team.id,
        query_embedding=unit_vector(1),
        weights=SEMANTIC_ONLY,
        now=NOW,
    )

    assert found[0].id == zebra
    assert found[0].signals.semantic == 1 > found[1].signals.semantic


async def test_a_pinned_memory_more_relevant_than_every_candidate_keeps_semantic_within_one(
    memories: MemoryRepository, team: Team
) -> None:
    # The vector candidates: nearer the query than the pinned memory, without its words.
    for number in range(RETRIEVAL_DEPTH):
        await add(memories, team, "Grace sails", embedding=near(2 + number, 0.1 + 0.004 * number))
    # The lexical candidates: every query word, far from the query, ids before the pinned one.
    for number in range(RETRIEVAL_DEPTH):
        weight = 1.8 + 0.16 * number  # cosine 0.49 down to 0.11
        await add(memories, team, "Ada will go climbing", embedding=near(100 + number, weight))
    pinned = uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
    await memories.add_many(
        [
            {
                "team_id": team.id,
                "memory_type": "episodic",
                "content": "Ada will go climbing",
                "embedding": near(200, 0.48),  # cosine 0.9
                "is_pinned": True,
            }
        ],
        ids=[pinned],
    )

    found = await retrieve(memories, team, limit=10)

    assert found[0].id == pinned
    for memory in found:
        assert all(0 <= value <= 1 for value in memory.signals.model_dump().values()), memory


async def test_recall_and_retrieve_check_only_the_vectors_they_may_return(
    memories: MemoryRepository, session: AsyncSession, team: Team, agent: Agent, user: User
) -> None:
    other = await AgentRepository(session).create(
        AgentCreate(
            team_id=team.id,
            name="Bo",
            slug="bo",
            personality=AgentPersonality(system_prompt_template="{memory_context}"),
            created_by=user.id,
        )
    )
    kept = await memories.remember("Ada climbs", MemoryType.SEMANTIC, team_id=team.id)
    expired = await add(memories, team, "Ada climbed", embedding_model="old-model")
    await run(
        session,
        "UPDATE memory SET expires_at = now() - interval '1 day' WHERE id = :id",
        id=expired,
    )
    await add(
        memories,
        team,
        "Bo's own notes",
        agent_id=other.id,
        memory_type=MemoryType.AGENT_PRIVATE,
        embedding_model="their-model",
    )

    found = await memories.recall("climbs", team_id=team.id, agent_id=agent.id)
    retrieved = await memories.retrieve("climbs", team_id=team.id, agent_id=agent.id)

    assert ids(found) == ids(retrieved) == [kept.id]  # type: ignore[arg-type]
    with pytest.raises(EmbeddingModelError, match="their-model"):
        await memories.recall("climbs", team_id=team.id, agent_id=other.id)
    with pytest.raises(EmbeddingModelError, match="their-model"):
        await memories.retrieve("climbs", team_id=team.id, agent_id=other.id)


async def test_a_conversation_without_messages_gives_no_continuity(
    memories: MemoryRepository, team: Team, agent: Agent, user: User, conversation: Conversation
) -> None:
    await add(memories, team, "Ada climbs", source_conversation_id=conversation.id)

    [found] = await memories.retrieve(
        QUERY,
        team_id=team.id,
        agent_id=agent.id,
        user_id=user.id,
        query_embedding=unit_vector(0),
    )

    assert found.signals.continuity == 0


@pytest.mark.parametrize(
    ("language", "content", "query"),
    [("en", "Ada was running marathons", "run"), ("fr", "Ada mangeait des pommes", "manger")],
)
async def test_team_wide_memories_and_queries_without_an_agent_are_read_in_the_teams_language(
    memories: MemoryRepository,
    session: AsyncSession,
    user: User,
    language: str,
    content: str,
    query: str,
) -> None:
    team = await TeamRepository(session).create(
        TeamCreate(name="Polyglots", slug="polyglots", owner_id=user.id, language=language)
    )
    for number in range(5):
        await add(memories, team, f"Grace sails boat {number}")
    stemmed = await add(memories, team, content)

    found = await memories.retrieve(
        query, team_id=team.id, query_embedding=unit_vector(1), weights=SEMANTIC_ONLY
    )
    config = await run(session, "SELECT text_config::text FROM memory WHERE id = :id", id=stemmed)

    assert found[0].id == stemmed
    assert found[0].signals.semantic == 1 > found[1].signals.semantic
    assert config.scalar_one() == {"en": "english", "fr": "french"}[language]


async def test_a_memory_id_kept_by_two_teams_has_a_history_in_each(
    memories: MemoryRepository, session: AsyncSession, team: Team
) -> None:
    other = await TeamRepository(session).create(
        TeamCreate(name="Other", slug="other", owner_id=team.owner_id)
    )
    shared = uuid.uuid4()
    then = datetime(2020, 1, 1, tzinfo=UTC)
    await memories.add_many(
        [{"team_id": team.id, "memory_type": "semantic", "content": "ours"}], ids=[shared]
    )
    await memories.add_many(
        [{"team_id": other.id, "memory_type": "semantic", "content": "theirs", "created_at": then}],
        ids=[shared],
    )

    [creation] = await memories.history(shared, team_id=other.id)
    later = then + timedelta(days=1)

    assert (creation.action, creation.created_at) == ("created", then)
    assert await memories.content_at(shared, later, team_id=other.id) == "theirs"
    assert await memories.content_at(shared, later, team_id=team.id) is None
    for call, words in (
        ("reconstruct_memory_at(CAST(:id AS uuid), now())", "has a history in 2 teams"),
        ("update_memory_access(ARRAY[CAST(:id AS uuid)])", "belongs to several teams"),
    ):
        with pytest.raises(DBAPIError, match=words):
            async with session.begin_nested():
                await run(session, f"SELECT {call}", id=shared)
