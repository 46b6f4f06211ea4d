"""A store that keeps its teams' indexes itself: as they grow, after bulk loads, when they shrink.

Nothing here calls `index_large_teams` to get an index: the process that wrote builds it
after its commit. The tests commit, so they run in a database of their own, at 8 dimensions.
"""

import asyncio
import importlib
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    HashingEmbedder,
    MemoryRepository,
    MemoryType,
    TeamCreate,
    TeamIndexes,
    TeamRepository,
    UserCreate,
    UserRepository,
    finish_index_builds,
    get_session_factory,
    index_large_teams,
    maintain,
    team_indexes,
)
from skill_store.settings import get_settings
from skill_store.team_indexes import EXACT_SEARCH_MAX_ROWS, INDEX_LOCK, LOAD_BATCH_MIN_ROWS

from ..support import migrated_database

ROWS_PER_LIST = importlib.import_module(
    "skill_store._migrations.versions.0016_crowded_search"
).ROWS_PER_LIST
DIMENSIONS = 8
BOUNDED_WAIT = 120  # seconds: a build of a few thousand rows takes a few
RNG = np.random.default_rng(19)


@dataclass
class Store:
    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]
    owner: uuid.UUID


@pytest.fixture(scope="module")
async def store(server_url: str) -> AsyncIterator[Store]:
    async with migrated_database(
        server_url, "skill_store_day_two", dimensions=DIMENSIONS
    ) as engine:
        factory = get_session_factory(engine)
        async with factory() as session:
            owner = await UserRepository(session).create(
                UserCreate(email="ops@example.com", display_name="Ops", password="correct horse")
            )
            await session.commit()
        yield Store(engine, factory, owner.id)
        await finish_index_builds(engine)


async def new_team(store: Store) -> uuid.UUID:
    async with store.factory() as session:
        slug = f"team-{uuid.uuid4().hex[:12]}"
        team = await TeamRepository(session).create(
            TeamCreate(name=slug, slug=slug, owner_id=store.owner)
        )
        await session.commit()
    return team.id


def vectors(count: int, around: np.ndarray | None = None) -> list[list[float]]:
    rows = RNG.normal(size=(count, DIMENSIONS))
    if around is not None:
        rows = around + 0.1 * rows
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    result: list[list[float]] = rows.tolist()
    return result


async def add(store: Store, team_id: uuid.UUID, embeddings: list[list[float]]) -> None:
    async with store.factory() as session:
        await MemoryRepository(session).add_many(
            {"team_id": team_id, "memory_type": "semantic", "content": f"m{n}", "embedding": v}
            for n, v in enumerate(embeddings)
        )
        await session.commit()


async def one(store: Store, sql: str, **params: Any) -> Any:
    async with store.factory() as session:
        return (await session.exec(text(sql), params=params)).one()  # type: ignore[call-overload]


async def search(store: Store, team_id: uuid.UUID, query: list[float]) -> tuple[set[str], list]:
    """The paths of a top-10 search, and its ids."""
    async with store.factory() as session:
        found = await MemoryRepository(session).search_by_embedding(
            query, team_id=team_id, limit=10
        )
        rows = await session.exec(  # type: ignore[call-overload]
            text(
                "SELECT DISTINCT path FROM search_memories(CAST(:query AS vector), :team, NULL,"
                " NULL, NULL, 10, NULL, :bound)"
            ),
            params={"query": query, "team": team_id, "bound": EXACT_SEARCH_MAX_ROWS},
        )
        return {row[0] for row in rows.all()}, [memory.id for memory in found]


async def exact_top(store: Store, team_id: uuid.UUID, query: list[float]) -> list[uuid.UUID]:
    """The true top 10, with index scans off (a team's partial index would answer)."""
    async with store.factory() as session:
        await session.exec(text("SET LOCAL enable_indexscan = off"))
        await session.exec(text("SET LOCAL enable_bitmapscan = off"))
        rows = await session.exec(  # type: ignore[call-overload]
            text(
                "SELECT id FROM memory WHERE team_id = :team AND status = 'active'"
                " ORDER BY embedding <=> CAST(:query AS vector), id LIMIT 10"
            ),
            params={"query": query, "team": team_id},
        )
        return [row[0] for row in rows.all()]


async def team_index(store: Store, team_id: uuid.UUID) -> tuple[str | None, int | None]:
    """The name of the team's HNSW index, and the load batches it holds."""
    name, covers, _rows, _lists = await one(store, "SELECT * FROM memory_team_index(:t)", t=team_id)
    return name, covers


async def searched_through_its_index(store: Store, team_id: uuid.UUID) -> set[str]:
    """Wait, within a bounded time, until a search of the team takes its own index."""
    query = vectors(1)[0]
    for _ in range(BOUNDED_WAIT * 10):
        paths, _ids = await search(store, team_id, query)
        if paths == {"index"}:
            return paths
        await asyncio.sleep(0.1)
    return paths


async def test_a_team_grown_past_the_bound_by_remember_gets_its_index(store: Store) -> None:
    team_id = await new_team(store)
    embedder = HashingEmbedder(DIMENSIONS)
    for number in range(EXACT_SEARCH_MAX_ROWS + 10):
        async with store.factory() as session:
            memories = MemoryRepository(session, embedder=embedder)
            await memories.remember(f"note {number}", MemoryType.SEMANTIC, team_id=team_id)
            await session.commit()

    assert await searched_through_its_index(store, team_id) == {"index"}


async def test_a_team_grown_past_the_bound_by_add_many_gets_its_index(store: Store) -> None:
    team_id = await new_team(store)
    await add(store, team_id, vectors(EXACT_SEARCH_MAX_ROWS - 100))
    assert await team_index(store, team_id) == (None, None)

    await add(store, team_id, vectors(200))

    assert await searched_through_its_index(store, team_id) == {"index"}
    name, covers = await team_index(store, team_id)
    assert name is not None and covers == 0


async def test_a_bulk_load_skips_the_graph_and_searches_stay_exact_until_its_new_index(
    store: Store,
) -> None:
    team_id = await new_team(store)
    await add(store, team_id, vectors(2 * LOAD_BATCH_MIN_ROWS))
    await finish_index_builds(store.engine)
    old_name, _ = await team_index(store, team_id)
    assert old_name is not None
    [old_size] = await one(store, "SELECT pg_relation_size(CAST(:n AS regclass))", n=old_name)
    centre = np.array(vectors(1)[0])
    query = vectors(1, around=centre)[0]

    async with store.engine.connect() as holder:  # the builds wait while it holds their lock
        await holder.execute(text("SELECT pg_advisory_lock(:key)"), {"key": INDEX_LOCK})
        await add(store, team_id, vectors(LOAD_BATCH_MIN_ROWS, around=centre))
        [batch, loaded] = await one(
            store,
            "SELECT max(load_batch), count(load_batch) FROM memory WHERE team_id = :t",
            t=team_id,
        )
        [size] = await one(store, "SELECT pg_relation_size(CAST(:n AS regclass))", n=old_name)
        paths, found = await search(store, team_id, query)
        expected = await exact_top(store, team_id, query)
        await holder.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": INDEX_LOCK})
        await holder.commit()
    await finish_index_builds(store.engine)
    new_name, covers = await team_index(store, team_id)
    after_paths, after_found = await search(store, team_id, query)

    # Meanwhile: the old index grew not a page, and searches read the load beside it.
    assert (loaded, size) == (LOAD_BATCH_MIN_ROWS, old_size)
    assert paths == {"index"}
    assert found == expected
    [new_rows] = await one(store, "SELECT count(*) FROM memory WHERE team_id = :t", t=team_id)
    assert set(expected) <= set(
        (
            await one(
                store,
                "SELECT array_agg(id) FROM memory WHERE team_id = :t AND load_batch IS NOT NULL",
                t=team_id,
            )
        )[0]
    )
    # Afterwards: a new index holds the load, the old one is gone.
    assert (new_name != old_name, covers) == (True, batch)
    assert await one(store, "SELECT to_regclass(:n) IS NULL", n=old_name) == (True,)
    assert (after_paths, after_found) == ({"index"}, expected)
    assert new_rows == 3 * LOAD_BATCH_MIN_ROWS


async def test_a_small_load_goes_into_the_graph(store: Store) -> None:
    team_id = await new_team(store)
    await add(store, team_id, vectors(2 * LOAD_BATCH_MIN_ROWS))
    await finish_index_builds(store.engine)
    name, covers = await team_index(store, team_id)

    await add(store, team_id, vectors(LOAD_BATCH_MIN_ROWS - 1))
    await finish_index_builds(store.engine)

    assert await team_index(store, team_id) == (name, covers)
    marked = await one(store, "SELECT count(load_batch) FROM memory WHERE team_id = :t", t=team_id)
    assert marked == (0,)


async def test_a_team_that_shrinks_keeps_its_index_and_is_searched_exactly(store: Store) -> None:
    team_id = await new_team(store)
    await add(store, team_id, vectors(EXACT_SEARCH_MAX_ROWS + 100))
    await finish_index_builds(store.engine)
    name, _ = await team_index(store, team_id)
    query = vectors(1)[0]

    async with store.factory() as session:
        await session.exec(  # type: ignore[call-overload]
            text(
                "DELETE FROM memory WHERE team_id = :t AND id IN"
                " (SELECT id FROM memory WHERE team_id = :t ORDER BY id LIMIT 200)"
            ),
            params={"t": team_id},
        )
        await session.commit()
    paths, found = await search(store, team_id, query)

    assert (paths, found) == ({"exact"}, await exact_top(store, team_id, query))
    assert (await index_large_teams(store.engine)).dropped == 0
    assert (await team_index(store, team_id))[0] == name


async def test_the_catalogs_name_no_team(store: Store) -> None:
    team_id = await new_team(store)
    await add(store, team_id, vectors(EXACT_SEARCH_MAX_ROWS + 1))
    await finish_index_builds(store.engine)
    assert (await team_index(store, team_id))[0] is not None

    async with store.factory() as session:
        rows = await session.exec(
            text(
                "SELECT c.relname || ' ' || pg_get_indexdef(c.oid) FROM pg_index AS i"
                " JOIN pg_class AS c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = 'memory'::regclass"
            )
        )
        catalog = " ".join(row[0] for row in rows.all())
        teams = (await session.exec(text("SELECT id FROM team"))).all()

    for (team,) in teams:
        assert str(team) not in catalog
        assert team.hex not in catalog


async def test_builds_at_once_from_two_places_make_one_pair_of_indexes(store: Store) -> None:
    team_id = await new_team(store)
    async with store.factory() as session:
        await session.exec(  # type: ignore[call-overload]
            text(
                "INSERT INTO memory (team_id, memory_type, content, embedding)"
                " SELECT :t, 'semantic', 'raw ' || n, CAST(:v AS vector)"
                " FROM generate_series(1, :rows) AS n"
            ),
            params={"t": team_id, "v": vectors(1)[0], "rows": EXACT_SEARCH_MAX_ROWS + 1},
        )
        await session.commit()

    done = await asyncio.gather(*(index_large_teams(store.engine) for _ in range(2)))

    assert sorted(len(result.built) for result in done) == [0, 1]
    assert [team_id] in [result.built for result in done]
    async with store.factory() as session:
        names = await session.exec(
            text(
                "SELECT count(*) FROM pg_class WHERE relname LIKE"
                " 'memory\\_team\\_' || lpad(to_hex(memory_team_key(:t)), 16, '0') || '\\_%'"
            ),
            params={"t": team_id},
        )
        assert names.one() == (2,)  # its HNSW and IVF indexes


async def test_an_index_left_invalid_by_a_failed_build_is_dropped(store: Store) -> None:
    team_id = await new_team(store)
    await add(store, team_id, vectors(EXACT_SEARCH_MAX_ROWS + 1))
    await finish_index_builds(store.engine)
    name, covers = await team_index(store, team_id)
    assert name is not None
    broken = name.rsplit("_", 1)[0] + "_999999"
    [key] = await one(store, "SELECT memory_team_key(:t)", t=team_id)
    async with store.engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(Exception, match="could not create unique index"):
            await autocommit.exec_driver_sql(
                f'CREATE UNIQUE INDEX CONCURRENTLY "{broken}" ON memory (team_id)'
                f" WHERE memory_team_key(team_id) = {key}"
            )

    assert await team_index(store, team_id) == (name, covers)
    assert await index_large_teams(store.engine) == TeamIndexes(built=[], dropped=1)
    assert await one(store, "SELECT to_regclass(:n) IS NULL", n=broken) == (True,)


async def test_with_index_builds_left_to_maintain_a_writer_builds_none(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INDEX_BUILDS", "maintain")
    get_settings.cache_clear()
    try:
        team_id = await new_team(store)
        await add(store, team_id, vectors(EXACT_SEARCH_MAX_ROWS + 1))
        await finish_index_builds(store.engine)

        assert await team_index(store, team_id) == (None, None)
        assert team_id in (await index_large_teams(store.engine)).built
    finally:
        monkeypatch.delenv("INDEX_BUILDS")
        get_settings.cache_clear()


async def test_a_team_grown_past_twice_its_lists_gets_a_new_ivf_index(store: Store) -> None:
    team_id = await new_team(store)
    await add(store, team_id, vectors(EXACT_SEARCH_MAX_ROWS + 100))
    await finish_index_builds(store.engine)
    [(name, lists)] = [
        await one(store, "SELECT index_name, lists FROM memory_team_index(:t)", t=team_id)
    ]
    for _ in range(4):  # small loads, into the indexes row by row
        await add(store, team_id, vectors(LOAD_BATCH_MIN_ROWS - 1))
    await finish_index_builds(store.engine)  # due once autovacuum has counted the rows
    await maintain(store.engine)  # else: fresh row counts, then the indexes due

    grown, more_lists = await one(
        store, "SELECT index_name, lists FROM memory_team_index(:t)", t=team_id
    )
    [(memories,)] = [await one(store, "SELECT count(*) FROM memory WHERE team_id = :t", t=team_id)]
    assert grown == name  # the HNSW index needs no rebuild to grow
    assert more_lists == math.ceil(memories / ROWS_PER_LIST) > 2 * lists
    assert (await search(store, team_id, vectors(1)[0]))[0] == {"index"}


async def test_a_team_too_large_for_the_build_memory_gets_the_most_lists_it_fits(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(team_indexes, "INDEX_BUILD_MEMORY", "1MB")
    team_id = await new_team(store)
    wanted = 50  # lists at one a ROWS_PER_LIST of memories: more than 1 MB of k-means
    await add(store, team_id, vectors(wanted * ROWS_PER_LIST))
    await finish_index_builds(store.engine)

    name, lists = await one(store, "SELECT index_name, lists FROM memory_team_index(:t)", t=team_id)
    assert name is not None
    assert wanted / 2 <= lists < wanted
    async with store.factory() as session:  # the lists wanted do not fit: pgvector says so
        await session.exec(text("SET LOCAL maintenance_work_mem = '1MB'"))
        with pytest.raises(Exception, match="memory required is"):
            await session.exec(
                text(
                    "CREATE INDEX ON memory USING ivfflat ((embedding::halfvec(8)) halfvec_l2_ops)"
                    f" WITH (lists = {wanted}) WHERE team_id = '{team_id}'"
                )
            )
    assert (await search(store, team_id, vectors(1)[0]))[0] == {"index"}
