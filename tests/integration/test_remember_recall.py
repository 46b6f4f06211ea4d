"""MemoryRepository's text helpers: `remember` and `recall` embed for the caller."""

from collections.abc import Sequence

import pytest
from pydantic import ValidationError
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    Agent,
    EmbeddingDimensionError,
    HashingEmbedder,
    MemoryRepository,
    MemoryType,
    Team,
    TeamCreate,
    TeamRepository,
    User,
)
from skill_store.settings import get_settings


class RecordingEmbedder:
    """A `HashingEmbedder` that records the texts it was asked to embed."""

    def __init__(self, dimensions: int) -> None:
        self.inner = HashingEmbedder(dimensions)
        self.texts: list[str] = []

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.texts.extend(texts)
        return await self.inner.embed(texts)


@pytest.fixture
def embedder() -> RecordingEmbedder:
    return RecordingEmbedder(get_settings().embedding_dimensions)


async def memory_rows(session: AsyncSession) -> int:
    return int((await session.exec(text("SELECT count(*) FROM memory"))).one()[0])  # type: ignore[call-overload]


async def test_remember_embeds_the_content_and_stores_every_field(
    memories: MemoryRepository, embedder: RecordingEmbedder, team: Team, agent: Agent, user: User
) -> None:
    memory = await memories.remember(
        "Ada climbs on Saturdays",
        MemoryType.EPISODIC,
        team_id=team.id,
        agent_id=agent.id,
        user_id=user.id,
        importance=8,
        tags=["hobbies"],
        actor="kyra",
        reason="Ada said so",
    )

    assert embedder.texts == ["Ada climbs on Saturdays"]
    stored = await memories.get(memory.id, team_id=team.id)
    assert stored.embedding == (await embedder.inner.embed(["Ada climbs on Saturdays"]))[0]
    assert (stored.memory_type, stored.agent_id, stored.user_id, stored.importance) == (
        MemoryType.EPISODIC,
        agent.id,
        user.id,
        8,
    )
    assert await memories.tags(memory.id, team_id=memory.team_id) == ["hobbies"]
    [created] = await memories.history(memory.id, team_id=memory.team_id)
    assert (created.action, created.changed_by, created.reason) == (
        "created",
        "kyra",
        "Ada said so",
    )


async def test_recall_finds_the_closest_memory_of_the_team_only(
    session: AsyncSession, memories: MemoryRepository, embedder: RecordingEmbedder, team: Team
) -> None:
    other = await TeamRepository(session).create(
        TeamCreate(name="Other", slug="other", owner_id=team.owner_id)
    )
    tea = await memories.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)
    await memories.remember("The office is in Lisbon", MemoryType.SEMANTIC, team_id=team.id)
    await memories.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=other.id)
    embedder.texts.clear()

    hits = await memories.recall("what does Ada drink", team_id=team.id, limit=5)

    assert embedder.texts == ["what does Ada drink"]
    assert hits[0].id == tea.id
    assert len(hits) == 2
    assert hits[0].similarity > hits[1].similarity
    assert [hit.id for hit in await memories.recall("green tea", team_id=team.id, limit=1)] == [
        tea.id
    ]


async def test_recall_passes_the_search_arguments_on(
    memories: MemoryRepository, team: Team, agent: Agent
) -> None:
    await memories.remember(
        "Kyra's own note about tea", MemoryType.AGENT_PRIVATE, team_id=team.id, agent_id=agent.id
    )
    shared = await memories.remember(
        "A shared note about tea", MemoryType.SEMANTIC, team_id=team.id
    )

    seen_by_team = await memories.recall("tea", team_id=team.id)
    seen_by_agent = await memories.recall("tea", team_id=team.id, agent_id=agent.id)
    only_semantic = await memories.recall(
        "tea", team_id=team.id, agent_id=agent.id, memory_types=[MemoryType.SEMANTIC]
    )

    assert [hit.id for hit in seen_by_team] == [shared.id]
    assert len(seen_by_agent) == 2
    assert [hit.id for hit in only_semantic] == [shared.id]
    assert await memories.recall("tea", team_id=team.id, min_similarity=0.99) == []


async def test_invalid_data_is_rejected_before_embedding(
    session: AsyncSession, memories: MemoryRepository, embedder: RecordingEmbedder, team: Team
) -> None:
    with pytest.raises(ValidationError, match="content"):
        await memories.remember("", MemoryType.SEMANTIC, team_id=team.id)
    with pytest.raises(ValidationError, match="importance"):
        await memories.remember("fine", MemoryType.SEMANTIC, team_id=team.id, importance=11)
    with pytest.raises(TypeError, match="create"):
        await memories.remember("fine", MemoryType.SEMANTIC, team_id=team.id, embedding=[1.0])

    assert embedder.texts == []
    assert await memory_rows(session) == 0


async def test_an_embedder_of_another_dimension_is_refused(
    session: AsyncSession, team: Team
) -> None:
    column = get_settings().embedding_dimensions
    memories = MemoryRepository(session, embedder=HashingEmbedder(column + 1))

    with pytest.raises(EmbeddingDimensionError) as raised:
        await memories.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)
    assert (raised.value.expected, raised.value.got) == (column, column + 1)
    with pytest.raises(EmbeddingDimensionError):
        await memories.recall("tea", team_id=team.id)
    assert await memory_rows(session) == 0


def test_the_default_embedder_comes_from_the_settings(
    session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(get_settings(), "embedding_api_key", None)

    embedder = MemoryRepository(session).embedder

    assert isinstance(embedder, HashingEmbedder)
    assert embedder.dimensions == get_settings().embedding_dimensions
