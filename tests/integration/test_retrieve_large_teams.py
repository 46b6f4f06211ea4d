"""`retrieve` in large teams: lexical recall reads a bounded part of the team, and still ranks.

The layout is adversarial on purpose: every memory of the large team holds the query's
common words, and another team's memories all hold the word that is rare in the large team.
Recall that counts every memory holding a query word reads the whole large team (and, with
an index that cannot filter by team, the other team's too). The tests count the rows a
call reads (the transaction's statistics), so they fail when a bound is lost, and check
that the memories holding the rare word still lead.

32 dimensions and random vectors: the vector side finds no memory in particular, so the six
memories holding the rare word are among the ten returned only if lexical recall finds them.
The tests commit, so they run in a database of their own.
"""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    MemoryRepository,
    RetrievalWeights,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    finish_index_builds,
    get_session_factory,
)
from skill_store.repositories.memory import RETRIEVAL_DEPTH

from ..support import migrated_database

DIMENSIONS = 32
LARGE = 3_000  # past the 2,000 memories up to which every query word is counted
CROWD = 4_000
SMALL = 300
RARE_HOLDERS = 6
# Ordered ids: 1 % of the team holds the rare word, but half of its 60 lowest ids do.
ORDERED_HOLDERS = 30
WORD_SAMPLE_ROWS = 256
SEMANTIC_ONLY = RetrievalWeights(semantic=1, recency=0, importance=0, continuity=0, relationship=0)
LIMIT = 10
# Rows lexical recall may read in the large team beside those of the vector search: the
# word sample (256), the memories holding the rare word and the candidates scored, with
# room to spare; well below the team's 3,000.
MAX_LEXICAL_ROWS = 1_000
RNG = np.random.default_rng(5)


def random_vectors(count: int) -> list[list[float]]:
    rows = RNG.normal(size=(count, DIMENSIONS))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    vectors: list[list[float]] = rows.tolist()
    return vectors


QUERY_VECTOR = random_vectors(1)[0]


@dataclass
class World:
    factory: async_sessionmaker[AsyncSession]
    large: uuid.UUID
    crowd: uuid.UUID
    small: uuid.UUID
    ordered: uuid.UUID
    rare: set[uuid.UUID]


@pytest.fixture(scope="module")
async def engine(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(
        server_url, "skill_store_large_retrieval", dimensions=DIMENSIONS
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
async def world(engine: AsyncEngine) -> World:
    """A large team whose memories all hold "alpha beta gamma", six of them "zebra" too;
    a crowd team whose memories all hold "zebra"; a small team like the large one; a team
    like the large one whose ids are in the order of its memories (as UUIDv7 or an
    import's), 30 of its first 60 holding "zebra"."""
    factory = get_session_factory(engine)
    async with factory() as session:
        owner = await UserRepository(session).create(
            UserCreate(email="owner@example.com", display_name="Owner", password="correct horse")
        )
        teams = TeamRepository(session)
        ids = {
            name: (await teams.create(TeamCreate(name=name, slug=name, owner_id=owner.id))).id
            for name in ("large", "crowd", "small", "ordered")
        }
        memories = MemoryRepository(session)
        for name, size, content in (
            ("large", LARGE, "alpha beta gamma note {n}"),
            ("crowd", CROWD, "zebra crossing {n}"),
            ("small", SMALL, "alpha beta gamma note {n}"),
        ):
            await memories.add_many(
                {
                    "team_id": ids[name],
                    "memory_type": "semantic",
                    "content": content.format(n=n)
                    + (" zebra" if name != "crowd" and n < RARE_HOLDERS else ""),
                    "embedding": vector,
                }
                for n, vector in enumerate(random_vectors(size))
            )
        await memories.add_many(
            (
                {
                    "team_id": ids["ordered"],
                    "memory_type": "semantic",
                    "content": f"alpha beta gamma note {n}"
                    + (" zebra" if n < 2 * ORDERED_HOLDERS and n % 2 == 0 else ""),
                    "embedding": vector,
                }
                for n, vector in enumerate(random_vectors(LARGE))
            ),
            ids=[uuid.UUID(int=n + 1) for n in range(LARGE)],
        )
        rows = await session.exec(
            text("SELECT id FROM memory WHERE team_id = :team AND content LIKE '%zebra'"),
            params={"team": ids["large"]},
        )
        rare = {row[0] for row in rows.all()}
        await session.commit()
    await finish_index_builds(engine)  # those the commit started
    async with factory() as session:
        # As after a bulk load: the full-text index's pending entries merged, statistics
        # taken. Until then the planner prices that index too high to use it.
        await session.exec(text("SELECT gin_clean_pending_list('idx_memory_team_text')"))
        await session.exec(text("ANALYZE memory"))
        await session.commit()
    return World(factory, ids["large"], ids["crowd"], ids["small"], ids["ordered"], rare)


async def rows_read(session: AsyncSession) -> int:
    """Rows of `memory` this transaction has read so far, by any scan."""
    result = await session.exec(
        text(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables WHERE relid = 'memory'::regclass"
        )
    )
    return int(result.one()[0])


async def retrieve_reading(
    world: World, team_id: uuid.UUID, query: str, plan_cache_mode: str = "auto"
) -> tuple[list[uuid.UUID], int]:
    """The ids `retrieve` returns, and the rows of `memory` it read beyond those that
    the vector search of its candidates reads (under `plan_cache_mode`)."""
    async with world.factory() as session:
        start = await rows_read(session)
        await MemoryRepository(session).search_by_embedding(
            QUERY_VECTOR, team_id=team_id, limit=max(RETRIEVAL_DEPTH, 4 * LIMIT)
        )
        searched = await rows_read(session) - start
    async with world.factory() as session:
        await session.exec(text(f"SET LOCAL plan_cache_mode = {plan_cache_mode}"))
        start = await rows_read(session)
        found = await MemoryRepository(session).retrieve(
            query,
            team_id=team_id,
            query_embedding=QUERY_VECTOR,
            weights=SEMANTIC_ONLY,
            limit=LIMIT,
        )
        retrieved = await rows_read(session) - start
    return [memory.id for memory in found], retrieved - searched


PLANS = pytest.mark.parametrize("plan_cache_mode", ["auto", "force_generic_plan"])


@PLANS
async def test_common_words_alone_read_a_bounded_part_of_a_large_team(
    world: World, plan_cache_mode: str
) -> None:
    found, read = await retrieve_reading(world, world.large, "alpha beta gamma", plan_cache_mode)

    assert len(found) == LIMIT
    assert read < MAX_LEXICAL_ROWS


@PLANS
async def test_a_word_rare_in_the_team_finds_its_memories(
    world: World, plan_cache_mode: str
) -> None:
    found, read = await retrieve_reading(world, world.large, "zebra alpha beta", plan_cache_mode)

    assert world.rare <= set(found)
    # The crowd's 4,000 memories holding the word are not read either.
    assert read < MAX_LEXICAL_ROWS


async def test_a_small_team_counts_every_word_and_finds_the_same(world: World) -> None:
    found, _ = await retrieve_reading(world, world.small, "zebra alpha beta")

    async with world.factory() as session:
        rows = await session.exec(
            text("SELECT id FROM memory WHERE team_id = :team AND content LIKE '%zebra'"),
            params={"team": world.small},
        )
        assert {row[0] for row in rows.all()} <= set(found)


async def test_a_large_team_without_its_index_is_counted_and_still_finds(world: World) -> None:
    async with world.factory() as session:
        name = await session.exec(
            text("SELECT index_name FROM memory_team_index(:team)"), params={"team": world.large}
        )
        await session.exec(text(f'DROP INDEX "{name.one()[0]}"'))
        found = await MemoryRepository(session).retrieve(
            "zebra alpha beta",
            team_id=world.large,
            query_embedding=QUERY_VECTOR,
            weights=SEMANTIC_ONLY,
            limit=LIMIT,
        )
        await session.rollback()

    assert world.rare <= {memory.id for memory in found}


async def test_a_rare_word_held_by_the_lowest_ids_still_finds_its_memories(world: World) -> None:
    found, _ = await retrieve_reading(world, world.ordered, "zebra alpha beta")

    async with world.factory() as session:
        by_id = await session.exec(
            text(
                "SELECT count(*) FILTER (WHERE content LIKE '%zebra') FROM"
                " (SELECT content FROM memory WHERE team_id = :team ORDER BY id LIMIT :rows) AS s"
            ),
            params={"team": world.ordered, "rows": WORD_SAMPLE_ROWS},
        )
        holders = await session.exec(
            text("SELECT id FROM memory WHERE team_id = :team AND content LIKE '%zebra'"),
            params={"team": world.ordered},
        )
        zebras = {row[0] for row in holders.all()}
    # The team's first memories by id make the rare word look common (over 2 % of them).
    assert by_id.one()[0] == ORDERED_HOLDERS
    assert len(zebras) == ORDERED_HOLDERS
    assert set(found) <= zebras
    assert len(found) == LIMIT


@pytest.mark.parametrize(
    "query", ["o'neil's zebra", "back\\slash zebra", "'' \" \\ ' zebra", "zebra:* & !zebra | ("]
)
async def test_quotes_and_operators_in_the_query_are_words(world: World, query: str) -> None:
    found, _ = await retrieve_reading(world, world.large, query)

    assert world.rare <= set(found)
