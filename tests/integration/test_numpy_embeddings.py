"""NumPy arrays at every entry point that takes an embedding, and back out of results."""

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    EmbeddingDimensionError,
    HashingEmbedder,
    MemoryCreate,
    MemoryRepository,
    MemoryType,
    Team,
    get_engine,
    get_session_factory,
    get_settings,
)

from ..support import fingerprint

DIMENSIONS = get_settings().embedding_dimensions


def random_vectors(count: int, seed: int = 3) -> NDArray[np.float64]:
    """`count` random vectors in float64, whose values float32 rounds."""
    return np.random.default_rng(seed).standard_normal((count, DIMENSIONS))


def memory(team: Team, embedding: Any, content: str = "a fact") -> dict[str, Any]:
    return {
        "team_id": team.id,
        "memory_type": MemoryType.SEMANTIC,
        "content": content,
        "embedding": embedding,
    }


@pytest.fixture
def memories(session: AsyncSession) -> MemoryRepository:
    return MemoryRepository(session, embedder=HashingEmbedder(DIMENSIONS))


async def test_create_stores_an_array_as_float32(
    memories: MemoryRepository, session: AsyncSession, team: Team
) -> None:
    [vector] = random_vectors(1)
    created = await memories.create(memory(team, vector))
    await session.refresh(created)  # the row as stored, which loads as a list

    assert isinstance(created.embedding, list)
    assert created.embedding_array is not None
    assert created.embedding_array.dtype == np.float32
    assert np.array_equal(created.embedding_array, vector.astype(np.float32))


async def test_update_stores_an_array(
    memories: MemoryRepository, session: AsyncSession, team: Team
) -> None:
    first, second = random_vectors(2)
    created = await memories.create(memory(team, first))
    await memories.update(created.id, {"embedding": second}, team_id=team.id)
    await session.refresh(created)

    assert np.array_equal(created.embedding_array, second.astype(np.float32))  # type: ignore[arg-type]


async def test_add_many_copies_arrays_of_dicts_and_of_models(
    memories: MemoryRepository, team: Team
) -> None:
    vectors = random_vectors(4)
    data = [
        memory(team, vectors[0].astype(np.float32)),  # kept as it is
        memory(team, vectors[1]),  # float64, converted once
        MemoryCreate.model_validate(memory(team, vectors[2].astype(np.float32))),
        memory(team, vectors[3].tolist()),  # a list still works
    ]
    ids = [uuid.uuid4() for _ in data]

    assert await memories.add_many(data, ids=ids) == 4

    for memory_id, vector in zip(ids, vectors, strict=True):
        stored = (await memories.get(memory_id, team_id=team.id)).embedding_array
        assert np.array_equal(stored, vector.astype(np.float32))  # type: ignore[arg-type]


async def test_search_and_retrieve_take_an_array_and_hits_give_one_back(
    memories: MemoryRepository, team: Team
) -> None:
    vectors = random_vectors(3)
    ids = [uuid.uuid4() for _ in vectors]
    await memories.add_many([memory(team, vector) for vector in vectors], ids=ids)
    query = vectors[1].astype(np.float32)

    hits = await memories.search_by_embedding(query, team_id=team.id, limit=1)
    [found] = await memories.retrieve("a fact", team_id=team.id, query_embedding=query, limit=1)

    assert [hit.id for hit in hits] == [found.id] == [ids[1]]
    assert hits[0].similarity == pytest.approx(1.0)
    assert np.array_equal(hits[0].embedding_array, query)  # type: ignore[arg-type]
    assert np.array_equal(found.embedding_array, query)  # type: ignore[arg-type]


def with_value(at: int, value: float) -> NDArray[np.float32]:
    vector = random_vectors(1)[0].astype(np.float32)
    vector[at] = value
    return vector


BAD_ARRAYS = [
    pytest.param(with_value(7, np.nan), "finite", id="nan"),
    pytest.param(random_vectors(1).astype(str)[0], "real numbers", id="strings"),
    pytest.param(random_vectors(1)[0].astype(object), "real numbers", id="objects"),
    pytest.param(random_vectors(2), "one-dimensional", id="two-rows"),
    pytest.param(random_vectors(1)[0, :3], "3 dimensions", id="short"),
    pytest.param(np.full(DIMENSIONS, 1e-40, np.float32), "all zeros", id="subnormal"),
]


def entry_points(memories: MemoryRepository, team: Team) -> list[Callable[[Any], Awaitable[Any]]]:
    good = random_vectors(1)[0]
    return [
        lambda query: memories.search_by_embedding(query, team_id=team.id),
        lambda query: memories.retrieve("a fact", team_id=team.id, query_embedding=query),
        lambda embedding: memories.create(memory(team, embedding)),
        lambda embedding: memories.add_many([memory(team, good), memory(team, embedding)]),
    ]


@pytest.mark.parametrize(("bad", "message"), BAD_ARRAYS)
async def test_a_bad_array_is_refused_everywhere_and_nothing_changes(
    memories: MemoryRepository, session: AsyncSession, team: Team, bad: NDArray[Any], message: str
) -> None:
    before = await fingerprint(session)
    for call in entry_points(memories, team):
        with pytest.raises(ValueError, match=message):
            await call(bad)
    assert await fingerprint(session) == before  # and the transaction is still usable


async def test_a_short_query_array_is_a_dimension_error(
    memories: MemoryRepository, team: Team
) -> None:
    with pytest.raises(EmbeddingDimensionError) as caught:
        await memories.search_by_embedding(np.ones(3, np.float32), team_id=team.id)
    assert (caught.value.expected, caught.value.got) == (DIMENSIONS, 3)


async def test_a_non_finite_value_is_located_in_the_array_and_among_the_items(
    memories: MemoryRepository, team: Team
) -> None:
    bad = with_value(7, np.inf)
    with pytest.raises(ValidationError) as searched:
        await memories.search_by_embedding(bad, team_id=team.id)
    with pytest.raises(ValidationError) as added:
        await memories.add_many([memory(team, random_vectors(1)[0]), memory(team, bad)])

    assert [error["loc"] for error in searched.value.errors()] == [(7,)]
    assert [error["loc"] for error in added.value.errors()] == [(1, "embedding", 7)]


async def test_the_column_dimension_is_read_once_per_engine(engine: AsyncEngine) -> None:
    url = engine.url.render_as_string(hide_password=False)
    reads = []
    for _ in range(2):
        other = await get_engine(url)
        read = 0

        def count(*arguments: Any) -> None:
            nonlocal read
            read += "pg_attribute" in arguments[2]

        event.listen(other.sync_engine, "before_cursor_execute", count)
        try:
            async with get_session_factory(other)() as session:
                for _ in range(3):
                    assert await MemoryRepository(session).column_dimensions() == DIMENSIONS
        finally:
            await other.dispose()
        reads.append(read)

    assert reads == [1, 1]
