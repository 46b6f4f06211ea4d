"""Each memory records the model of its vector; a search never compares two models' vectors."""

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    EmbeddingModelError,
    HashingEmbedder,
    MemoryRepository,
    MemoryType,
    Team,
    TeamCreate,
    TeamRepository,
)
from skill_store.embeddings import HASHING_MODEL
from skill_store.portability import export_memories, import_memories
from skill_store.settings import get_settings

from ..support import unit_vector

OTHER_MODEL = "text-embedding-3-small"


class NamedEmbedder(HashingEmbedder):
    """Hashing vectors under another model's name, counting its calls: a second embedder."""

    def __init__(self, model: str) -> None:
        super().__init__(get_settings().embedding_dimensions)
        self.model = model
        self.calls = 0

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.calls += 1
        return await super().embed(texts)


@pytest.fixture
def hashing(session: AsyncSession) -> MemoryRepository:
    return MemoryRepository(session, embedder=HashingEmbedder(get_settings().embedding_dimensions))


@pytest.fixture
def other(session: AsyncSession) -> MemoryRepository:
    return MemoryRepository(session, embedder=NamedEmbedder(OTHER_MODEL))


async def stored_model(session: AsyncSession, memory_id: uuid.UUID) -> str | None:
    statement = text("SELECT embedding_model FROM memory WHERE id = :id").bindparams(id=memory_id)
    model: str | None = (await session.exec(statement)).one()[0]  # type: ignore[call-overload]
    return model


async def another_team(session: AsyncSession, team: Team) -> Team:
    return await TeamRepository(session).create(
        TeamCreate(name="Other", slug="other", owner_id=team.owner_id)
    )


def a_memory(team: Team, **fields: Any) -> dict[str, Any]:
    return {
        "team_id": team.id,
        "memory_type": MemoryType.SEMANTIC,
        "content": "Ada drinks green tea",
        "embedding": unit_vector(0),
        **fields,
    }


async def test_remember_records_the_embedders_model(
    session: AsyncSession, hashing: MemoryRepository, other: MemoryRepository, team: Team
) -> None:
    first = await hashing.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)
    second = await other.remember(
        "Ada drinks green tea", MemoryType.SEMANTIC, team_id=(await another_team(session, team)).id
    )

    assert await stored_model(session, first.id) == HASHING_MODEL
    assert await stored_model(session, second.id) == OTHER_MODEL
    with pytest.raises(TypeError, match="create"):
        await hashing.remember(
            "fine", MemoryType.SEMANTIC, team_id=team.id, embedding_model=OTHER_MODEL
        )


async def test_recall_with_another_model_than_the_teams_memories_raises(
    session: AsyncSession, hashing: MemoryRepository, team: Team
) -> None:
    await hashing.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)
    embedder = NamedEmbedder(OTHER_MODEL)
    other = MemoryRepository(session, embedder=embedder)

    with pytest.raises(EmbeddingModelError) as raised:
        await other.recall("what does Ada drink", team_id=team.id)

    assert str(raised.value).startswith(
        "the team's memories were embedded with 'hashing', the query with 'text-embedding-3-small'"
    )
    assert (raised.value.stored, raised.value.query) == ([HASHING_MODEL], OTHER_MODEL)
    assert embedder.calls == 0  # checked before the query is embedded
    assert len(await hashing.recall("what does Ada drink", team_id=team.id)) == 1


async def test_retrieve_checks_the_model_of_the_query_it_embeds(
    hashing: MemoryRepository, other: MemoryRepository, team: Team
) -> None:
    memory = await hashing.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)

    with pytest.raises(EmbeddingModelError, match="'hashing', the query with"):
        await other.retrieve("what does Ada drink", team_id=team.id)
    # A caller's own vector carries no model name: it is not checked.
    [found] = await other.retrieve(
        "what does Ada drink", team_id=team.id, query_embedding=unit_vector(0)
    )
    assert found.id == memory.id


async def test_a_team_of_two_models_is_searched_by_neither(
    hashing: MemoryRepository, other: MemoryRepository, team: Team
) -> None:
    await hashing.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)
    await other.create(a_memory(team, embedding_model=OTHER_MODEL))

    for repository in (hashing, other):
        with pytest.raises(EmbeddingModelError) as raised:
            await repository.recall("tea", team_id=team.id)
        assert raised.value.stored == [HASHING_MODEL, OTHER_MODEL]
    assert "embedded with 'hashing' and 'text-embedding-3-small'" in str(raised.value)


async def test_memories_of_unknown_model_are_searched_with_any_embedder(
    hashing: MemoryRepository, other: MemoryRepository, team: Team
) -> None:
    unknown = await hashing.create(a_memory(team))

    assert unknown.embedding_model is None
    assert [hit.id for hit in await other.recall("tea", team_id=team.id)] == [unknown.id]
    assert [hit.id for hit in await hashing.recall("tea", team_id=team.id)] == [unknown.id]


async def test_only_the_teams_active_memories_are_compared(
    session: AsyncSession, hashing: MemoryRepository, other: MemoryRepository, team: Team
) -> None:
    neighbour = await another_team(session, team)
    await hashing.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=neighbour.id)
    archived = await hashing.remember("Ada drinks black tea", MemoryType.SEMANTIC, team_id=team.id)
    await hashing.archive(archived.id, team_id=team.id)
    current = await other.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)

    assert [hit.id for hit in await other.recall("tea", team_id=team.id)] == [current.id]


async def test_a_new_embedding_without_its_model_makes_the_model_unknown(
    session: AsyncSession, hashing: MemoryRepository, team: Team
) -> None:
    memory = await hashing.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)

    await hashing.update(memory.id, {"embedding": unit_vector(1)}, team_id=team.id)
    assert await stored_model(session, memory.id) is None

    update = {"embedding": unit_vector(2), "embedding_model": OTHER_MODEL}
    await hashing.update(memory.id, update, team_id=team.id)
    await hashing.update(memory.id, {"importance": 9}, team_id=team.id)
    assert await stored_model(session, memory.id) == OTHER_MODEL


async def test_naming_the_model_of_a_vector_is_audited(
    session: AsyncSession, hashing: MemoryRepository, team: Team
) -> None:
    memory = await hashing.create(a_memory(team))

    await hashing.update(memory.id, {"embedding_model": OTHER_MODEL}, team_id=team.id)

    assert await stored_model(session, memory.id) == OTHER_MODEL
    history = await hashing.history(memory.id, team_id=team.id)
    assert [entry.action for entry in history] == ["created", "updated"]


async def test_add_many_copies_the_model(
    session: AsyncSession, hashing: MemoryRepository, team: Team
) -> None:
    await hashing.add_many([a_memory(team, embedding_model=OTHER_MODEL), a_memory(team)])

    models = await session.exec(text("SELECT embedding_model FROM memory ORDER BY 1"))  # type: ignore[call-overload]
    assert [model for (model,) in models] == [OTHER_MODEL, None]


async def test_export_and_import_keep_the_model_and_name_the_importers(
    session: AsyncSession, hashing: MemoryRepository, team: Team, tmp_path: Path
) -> None:
    await hashing.remember("Ada drinks green tea", MemoryType.SEMANTIC, team_id=team.id)
    lines = [line async for line in export_memories(session, team.id)]
    unembedded = {"memory_type": "semantic", "content": "Ada climbs"}
    file = tmp_path / "memories.jsonl"
    file.write_text("\n".join([*lines, json.dumps(unembedded)]) + "\n")
    neighbour = await another_team(session, team)

    await import_memories(session, file, neighbour.id, NamedEmbedder(OTHER_MODEL))

    assert json.loads(lines[0])["embedding_model"] == HASHING_MODEL
    imported = await hashing.list(team_id=neighbour.id)
    assert {(memory.content, memory.embedding_model) for memory in imported} == {
        ("Ada drinks green tea", HASHING_MODEL),
        ("Ada climbs", OTHER_MODEL),
    }
