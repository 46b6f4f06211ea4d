"""Vectors are checked as float32, as the `vector` column stores them: search never yields NaN."""

import math

import pytest
from pydantic import ValidationError
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import MemoryCreate, MemoryRepository, MemoryType, Team, get_settings

from ..support import fingerprint

DIMENSIONS = get_settings().embedding_dimensions


def vector(*values: float) -> list[float]:
    return [*values, *[0.0] * (DIMENSIONS - len(values))]


UNUSABLE = [
    pytest.param(vector(1e-46), id="subnormal-becomes-zero"),
    pytest.param(vector(1e-30, -1e-30), id="squares-underflow"),
    pytest.param(vector(1e39), id="above-float32"),
    pytest.param(vector(3e38), id="square-overflows"),
]
USABLE = [vector(2e-19), vector(0.0, 1e19), vector(0.6, 0.8), vector(-1.0, 1e-3)]


def memory(team: Team, embedding: list[float]) -> MemoryCreate:
    return MemoryCreate(
        team_id=team.id, memory_type=MemoryType.SEMANTIC, content="a fact", embedding=embedding
    )


@pytest.mark.parametrize("embedding", UNUSABLE)
async def test_vector_unusable_in_float32_is_refused_by_search_and_writes(
    session: AsyncSession, team: Team, embedding: list[float]
) -> None:
    repository = MemoryRepository(session)
    before = await fingerprint(session)
    with pytest.raises(ValueError, match="embedding"):
        await repository.search_by_embedding(embedding, team_id=team.id)
    with pytest.raises(ValidationError, match="embedding"):
        await repository.create(
            {
                "team_id": team.id,
                "memory_type": "semantic",
                "content": "a fact",
                "embedding": embedding,
            }
        )
    with pytest.raises(ValidationError, match="embedding"):
        await repository.add_many(
            [
                {
                    "team_id": team.id,
                    "memory_type": "semantic",
                    "content": "a fact",
                    "embedding": embedding,
                }
            ]
        )
    assert await fingerprint(session) == before  # and the transaction is still usable


async def test_search_between_extreme_usable_vectors_never_returns_nan(
    session: AsyncSession, team: Team
) -> None:
    repository = MemoryRepository(session)
    await repository.add_many([memory(team, embedding) for embedding in USABLE])
    for query in USABLE:
        hits = await repository.search_by_embedding(query, team_id=team.id)
        assert len(hits) == len(USABLE)
        assert all(math.isfinite(hit.similarity) for hit in hits)
        assert hits[0].similarity == pytest.approx(1.0)
