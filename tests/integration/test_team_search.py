"""A team's vector search beside a bigger team clustered around the queries.

The layouts are adversarial on purpose: every team's memories lie farther from the queries
than the crowd team's, so one HNSW index shared by all teams walks the crowd first and
returns too few or wrong hits (the control test shows it). Each team must still get its own
nearest memories, as an exact scan of that team finds them.

32 dimensions reproduce the failures of 1536 at a fraction of the cost. The tests commit, so
they run in a database of their own, migrated with EMBEDDING_DIMENSIONS=32.
"""

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    MemoryRepository,
    MemorySearchResult,
    MemoryType,
    TeamCreate,
    TeamIndexes,
    TeamRepository,
    UserCreate,
    UserRepository,
    finish_index_builds,
    get_session_factory,
    index_large_teams,
)
from skill_store.repositories import memory as memory_module

from ..support import migrated_database

DIMENSIONS = 32
CROWD = 24_000
PROCEDURES = 600
SIZES = {"small": 300, "mid": 1_500, "large": 5_000}
QUERIES_PER_CLASS = 5
QUERY_CLASSES = ("crowded", "open")
LIMIT = 10


@dataclass
class World:
    engine: AsyncEngine
    factory: async_sessionmaker[AsyncSession]
    crowd: uuid.UUID
    teams: dict[str, uuid.UUID]
    queries: dict[str, list[list[float]]]


def unit_rows(
    rng: np.random.Generator,
    count: int,
    centre: Any = None,
    noise: float = 1.0,
    unrelated_to: Any = None,
) -> Any:
    """Random unit vectors: around `centre`, or anywhere, or orthogonal to `unrelated_to`."""
    rows = rng.normal(size=(count, DIMENSIONS)) * noise
    if centre is not None:
        rows += centre
    if unrelated_to is not None:
        rows -= np.outer(rows @ unrelated_to, unrelated_to)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
async def engine(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(
        server_url, "skill_store_team_search", dimensions=DIMENSIONS
    ) as engine:
        yield engine


@pytest.fixture(scope="module")
async def world(engine: AsyncEngine) -> World:
    """The crowd: 24,000 memories around one direction, 600 procedures elsewhere.

    Beside it, teams of 300, 1,500 and 5,000 memories unrelated to that direction (orthogonal
    to it), and each team's own index built. Crowded queries lie in the crowd: every team's
    memories are farther from them than the crowd's 24,000 (more than `hnsw.max_scan_tuples`).
    Open queries point anywhere.
    """
    rng = np.random.default_rng(11)
    centre = unit_rows(rng, 1)[0]
    factory = get_session_factory(engine)
    async with factory() as session:
        owner = await UserRepository(session).create(
            UserCreate(email="owner@example.com", display_name="Owner", password="correct horse")
        )
        teams = TeamRepository(session)
        crowd = await teams.create(TeamCreate(name="Crowd", slug="crowd", owner_id=owner.id))
        ids = {
            name: (await teams.create(TeamCreate(name=name, slug=name, owner_id=owner.id))).id
            for name in SIZES
        }
        memories = MemoryRepository(session)
        clustered = unit_rows(rng, CROWD, centre, noise=0.05)
        await memories.add_many(
            {"team_id": crowd.id, "memory_type": "semantic", "content": f"c{n}", "embedding": v}
            for n, v in enumerate(clustered.tolist())
        )
        await memories.add_many(
            {"team_id": crowd.id, "memory_type": "procedural", "content": f"p{n}", "embedding": v}
            for n, v in enumerate(unit_rows(rng, PROCEDURES, unrelated_to=centre).tolist())
        )
        for name, size in SIZES.items():
            await memories.add_many(
                {
                    "team_id": ids[name],
                    "memory_type": "semantic",
                    "content": f"{name}{n}",
                    "embedding": v,
                }
                for n, v in enumerate(unit_rows(rng, size, unrelated_to=centre).tolist())
            )
        await session.commit()
    await finish_index_builds(engine)  # those the commit started
    async with factory() as session:
        await session.exec(text("ANALYZE memory"))
        await session.commit()
    queries = {
        "crowded": unit_rows(rng, QUERIES_PER_CLASS, centre, noise=0.02).tolist(),
        "open": unit_rows(rng, QUERIES_PER_CLASS).tolist(),
    }
    return World(engine, factory, crowd.id, ids, queries)


async def exact_top(
    session: AsyncSession,
    query: list[float],
    team_id: uuid.UUID,
    limit: int = LIMIT,
    **filters: Any,
) -> list[uuid.UUID]:
    """The team's nearest memories by a sequential scan, the ground truth."""
    await session.exec(text("SET LOCAL enable_indexscan = off"))
    await session.exec(text("SET LOCAL enable_bitmapscan = off"))
    types = filters.get("memory_types")
    rows = await session.exec(
        text(
            "SELECT id FROM memory WHERE team_id = :team_id AND status = 'active'"
            " AND (CAST(:types AS memory_type_enum[]) IS NULL"
            "      OR memory_type = ANY (CAST(:types AS memory_type_enum[])))"
            " ORDER BY embedding <=> CAST(:query AS vector), id LIMIT :limit"
        ),
        params={"team_id": team_id, "query": query, "limit": limit, "types": types},
    )
    return [row[0] for row in rows.all()]


async def paths(
    session: AsyncSession, query: list[float], team_id: uuid.UUID, **options: Any
) -> set[str]:
    """The paths `search_memories` reports for a search."""
    rows = await session.exec(
        text(
            "SELECT DISTINCT path FROM search_memories(CAST(:query AS vector), :team_id, NULL,"
            " NULL, CAST(:types AS memory_type_enum[]), :limit, :min_similarity, :exact_max)"
        ),
        params={
            "query": query,
            "team_id": team_id,
            "types": options.get("types"),
            "limit": options.get("limit", LIMIT),
            "min_similarity": options.get("min_similarity"),
            "exact_max": memory_module.EXACT_SEARCH_MAX_ROWS,
        },
    )
    return {row[0] for row in rows.all()}


async def drop_team_index(session: AsyncSession, team_id: uuid.UUID) -> None:
    """Drop the team's index in the session's transaction (a rollback brings it back)."""
    name = await session.exec(
        text("SELECT index_name FROM memory_team_index(:team)"), params={"team": team_id}
    )
    await session.exec(text(f'DROP INDEX "{name.one()[0]}"'))


async def team_index_use(session: AsyncSession, team_id: uuid.UUID) -> tuple[int, int]:
    """Scans of the team's index in this transaction so far, and entries they returned."""
    result = await session.exec(
        text(
            "SELECT pg_stat_get_xact_numscans(i), pg_stat_get_xact_tuples_returned(i)"
            " FROM to_regclass((memory_team_index(:team)).index_name) AS i"
        ),
        params={"team": team_id},
    )
    scans, entries = result.one()
    return int(scans), int(entries)


async def search_reading_team_index(
    session: AsyncSession, query: list[float], team_id: uuid.UUID, **options: Any
) -> tuple[list[MemorySearchResult], int, int]:
    """`search_by_embedding`'s hits, the scans of the team's index it made and the entries
    they returned."""
    scans, entries = await team_index_use(session, team_id)
    hits = await MemoryRepository(session).search_by_embedding(query, team_id=team_id, **options)
    scans_after, entries_after = await team_index_use(session, team_id)
    return hits, scans_after - scans, entries_after - entries


def recall(found: list[uuid.UUID], expected: list[uuid.UUID]) -> float:
    return len(set(found) & set(expected)) / len(expected)


# A crowded query is unrelated to the other teams' memories (orthogonal to all of them): an
# index cannot be trusted to rank such near-equidistant memories, so they are scanned exactly.
EXPECTED_PATH = {
    ("small", "crowded"): "exact",
    ("small", "open"): "exact",
    ("mid", "crowded"): "wide",
    ("mid", "open"): "index",
    ("large", "crowded"): "wide",
    ("large", "open"): "index",
}


@pytest.mark.parametrize("queries", QUERY_CLASSES)
@pytest.mark.parametrize("size", SIZES)
async def test_each_team_finds_its_own_nearest_beside_the_crowd(
    world: World, size: str, queries: str
) -> None:
    team_id = world.teams[size]
    recalls = []
    for query in world.queries[queries]:
        async with world.factory() as session:
            expected = await exact_top(session, query, team_id)
        async with world.factory() as session:
            hits = await MemoryRepository(session).search_by_embedding(
                query, team_id=team_id, limit=LIMIT
            )
            assert await paths(session, query, team_id) == {EXPECTED_PATH[size, queries]}
        assert len(hits) == LIMIT
        assert {hit.team_id for hit in hits} == {team_id}
        recalls.append(recall([hit.id for hit in hits], expected))
    if queries == "crowded":  # every list of the IVF index read: exact at up to 5,000 memories
        assert recalls == [1.0] * len(recalls)
    assert min(recalls) >= 0.9
    assert sum(recalls) / len(recalls) >= 0.95


@pytest.mark.parametrize("queries", QUERY_CLASSES)
async def test_similarities_are_exact_on_every_path(world: World, queries: str) -> None:
    """The indexes rank halfvecs; the hits are re-ranked, and scored, in single precision."""
    for size, team_id in world.teams.items():
        query = world.queries[queries][1]
        async with world.factory() as session:
            hits = await MemoryRepository(session).search_by_embedding(query, team_id=team_id)
            exact = await session.exec(
                text(
                    "SELECT id, 1 - (embedding <=> CAST(:query AS vector)) FROM memory"
                    " WHERE team_id = :team AND id = ANY (CAST(:ids AS uuid[]))"
                ),
                params={"query": query, "team": team_id, "ids": [hit.id for hit in hits]},
            )
            similarities = dict(exact.all())
        assert [hit.similarity for hit in hits] == [similarities[hit.id] for hit in hits], size
        assert [hit.similarity for hit in hits] == sorted(
            (hit.similarity for hit in hits), reverse=True
        )


@pytest.mark.parametrize("size", SIZES)
async def test_a_hundred_hits_when_a_hundred_are_asked(world: World, size: str) -> None:
    async with world.factory() as session:
        hits = await MemoryRepository(session).search_by_embedding(
            world.queries["crowded"][0], team_id=world.teams[size], limit=100
        )
    assert len(hits) == 100


async def test_the_layout_defeats_an_index_shared_by_all_teams(world: World) -> None:
    """The control: without an index of its own, the mid-size team's hits are wrong."""
    team_id = world.teams["mid"]
    query = world.queries["crowded"][0]
    async with world.factory() as session:
        expected = await exact_top(session, query, team_id)
    async with world.factory() as session:
        await drop_team_index(session, team_id)
        await session.exec(
            text("CREATE INDEX shared_embedding ON memory USING hnsw (embedding vector_cosine_ops)")
        )
        await session.exec(text("SET LOCAL hnsw.iterative_scan = strict_order"))
        await session.exec(text("SET LOCAL enable_sort = off"))
        rows = await session.exec(
            text(
                "SELECT id FROM memory WHERE team_id = :team_id AND status = 'active'"
                " ORDER BY embedding <=> CAST(:query AS vector) LIMIT :limit"
            ),
            params={"team_id": team_id, "query": query, "limit": LIMIT},
        )
        found = [row[0] for row in rows.all()]
        await session.rollback()
    assert recall(found, expected) < 0.5


async def test_a_large_team_without_its_index_is_searched_exactly(world: World) -> None:
    team_id = world.teams["large"]
    query = world.queries["crowded"][4]
    async with world.factory() as session:
        expected = await exact_top(session, query, team_id)
    async with world.factory() as session:
        await drop_team_index(session, team_id)
        hits = await MemoryRepository(session).search_by_embedding(query, team_id=team_id)
        reported = await paths(session, query, team_id)
        await session.rollback()
    assert reported == {"unindexed"}
    assert [hit.id for hit in hits[:LIMIT]] == expected


async def test_a_crowded_query_is_searched_exactly_until_the_ivf_index_is_built(
    world: World,
) -> None:
    team_id = world.teams["large"]
    query = world.queries["crowded"][1]
    async with world.factory() as session:
        expected = await exact_top(session, query, team_id)
    async with world.factory() as session:
        name = await session.exec(
            text("SELECT index_name || '_' || lists FROM memory_team_index(:team)"),
            params={"team": team_id},
        )
        await session.exec(text(f'DROP INDEX "{name.one()[0]}"'))
        hits = await MemoryRepository(session).search_by_embedding(query, team_id=team_id)
        reported = await paths(session, query, team_id)
        await session.rollback()
    assert reported == {"fallback"}
    assert [hit.id for hit in hits[:LIMIT]] == expected


async def test_a_scan_cut_short_is_answered_by_the_teams_ivf_index(world: World) -> None:
    """The crowd's 600 procedures lie behind its 24,000 other memories in its own index.

    With a small `work_mem` the HNSW index's iterative scan stops before it reaches ten of
    them; the IVF index reads lists until it has them. Its lists come from a k-means of a
    random sample, so which of the true nearest it finds varies from build to build: over
    25 builds a query missed one of its ten in one build of five, two once; the five
    queries together never missed more than two of their fifty. A filtered search reads
    more lists than an unfiltered one: reading as few (43 of 197), the five found 0.70 to
    0.88 of their nearest in each of 8 builds.
    """
    found = []
    for query in world.queries["crowded"]:
        async with world.factory() as session:
            expected = await exact_top(session, query, world.crowd, memory_types=["procedural"])
        async with world.factory() as session:
            await session.exec(text("SET LOCAL work_mem = '64kB'"))
            await session.exec(text("SET LOCAL hnsw.iterative_scan = strict_order"))
            await session.exec(text("SET LOCAL enable_sort = off"))
            raw = await session.exec(
                text(
                    "SELECT id FROM memory WHERE team_id = :team_id AND status = 'active'"
                    " AND memory_team_key(team_id) = memory_team_key(:team_id)"
                    " AND coalesce(load_batch, 0) <= 0 AND memory_type = 'procedural'"
                    " ORDER BY embedding::halfvec(32) <=> CAST(:query AS vector)::halfvec(32)"
                    " LIMIT :limit"
                ),
                params={"team_id": world.crowd, "query": query, "limit": LIMIT},
            )
            assert len(raw.all()) < LIMIT
            hits = await MemoryRepository(session).search_by_embedding(
                query, team_id=world.crowd, memory_types=[MemoryType.PROCEDURAL]
            )
            reported = await paths(session, query, world.crowd, types=["procedural"])
        assert reported == {"wide"}
        assert {hit.memory_type for hit in hits} == {MemoryType.PROCEDURAL}
        found.append(recall([hit.id for hit in hits[:LIMIT]], expected))
    assert sum(found) / len(found) >= 0.9


async def test_the_caller_generic_plans_do_not_hide_the_team_index(world: World) -> None:
    team_id = world.teams["large"]
    query = world.queries["open"][2]
    async with world.factory() as session:
        expected = await exact_top(session, query, team_id)
    for _ in range(7):
        async with world.factory() as session:
            await session.exec(text("SET LOCAL plan_cache_mode = force_generic_plan"))
            hits, scans, entries = await search_reading_team_index(session, query, team_id)
        assert scans == 2  # the short walk, then the pass
        assert 30 <= entries <= 210
        assert recall([hit.id for hit in hits[:LIMIT]], expected) >= 0.9


async def test_a_crowded_query_is_known_by_a_short_walk_of_the_hnsw_index(world: World) -> None:
    """Ten entries of the team's HNSW index show that the query is crowded; its hits come
    from the IVF index, the HNSW index not walked for them."""
    team_id = world.teams["large"]
    for query in world.queries["crowded"]:
        async with world.factory() as session:
            hits, scans, entries = await search_reading_team_index(session, query, team_id)
            reported = await paths(session, query, team_id)
        assert reported == {"wide"}
        assert len(hits) == 20
        assert scans == 1
        assert entries <= 10


@pytest.mark.parametrize("size", ["small", "large"])
async def test_a_search_is_one_statement(world: World, size: str) -> None:
    statements: list[str] = []
    async with world.factory() as session:
        connection = await session.connection()

        def record(*args: Any) -> None:
            statements.append(args[2])

        event.listen(connection.sync_connection, "before_cursor_execute", record)
        hits = await MemoryRepository(session).search_by_embedding(
            world.queries["crowded"][0], team_id=world.teams[size]
        )
        event.remove(connection.sync_connection, "before_cursor_execute", record)
    assert len(statements) == 1, statements
    assert len(hits) == 20


@pytest.mark.parametrize("size", ["small", "large"])
async def test_min_similarity_keeps_the_best_hits_on_each_path(world: World, size: str) -> None:
    team_id = world.teams[size]
    query = world.queries["crowded"][2]
    async with world.factory() as session:
        everything = await MemoryRepository(session).search_by_embedding(query, team_id=team_id)
        threshold = everything[2].similarity
        hits = await MemoryRepository(session).search_by_embedding(
            query, team_id=team_id, min_similarity=threshold
        )
        reported = await paths(session, query, team_id, min_similarity=threshold)
    assert [hit.id for hit in hits] == [hit.id for hit in everything[:3]]
    assert reported == {EXPECTED_PATH[size, "crowded"]}


async def test_an_unmet_min_similarity_stops_the_index_scan_at_once(world: World) -> None:
    """Not a walk through the team's 5,000 memories for nothing."""
    team_id = world.teams["large"]
    async with world.factory() as session:
        hits, _, read = await search_reading_team_index(
            session, world.queries["crowded"][0], team_id, min_similarity=0.999
        )
    assert hits == []
    assert 0 < read <= 100


async def test_counting_candidates_stops_at_the_bound(world: World) -> None:
    async with world.factory() as session:
        before = (
            await session.exec(
                text("SELECT pg_stat_get_xact_tuples_returned('idx_memory_team_type'::regclass)")
            )
        ).one()[0]
        await MemoryRepository(session).search_by_embedding(
            world.queries["crowded"][0], team_id=world.crowd
        )
        after = (
            await session.exec(
                text("SELECT pg_stat_get_xact_tuples_returned('idx_memory_team_type'::regclass)")
            )
        ).one()[0]
    assert 0 < after - before <= memory_module.EXACT_SEARCH_MAX_ROWS + 1


async def test_search_settings_last_only_for_the_search(world: World) -> None:
    names = (
        "hnsw.ef_search",
        "hnsw.iterative_scan",
        "hnsw.max_scan_tuples",
        "ivfflat.iterative_scan",
        "ivfflat.probes",
        "enable_sort",
        "plan_cache_mode",
    )
    async with world.factory() as session:
        await session.exec(text("SET LOCAL hnsw.ef_search = 77"))
        await session.exec(text("SET LOCAL ivfflat.probes = 3"))
        hits = await MemoryRepository(session).search_by_embedding(
            world.queries["crowded"][0], team_id=world.teams["large"]
        )
        after = [(await session.exec(text(f"SHOW {name}"))).one()[0] for name in names]
    assert len(hits) == 20
    assert after == ["77", "off", "20000", "off", "3", "on", "auto"]


async def team_indexes(session: AsyncSession) -> set[str]:
    rows = await session.exec(
        text(
            "SELECT indexrelid::regclass::text FROM pg_index"
            " WHERE indrelid = 'memory'::regclass"
            r" AND indexrelid::regclass::text LIKE 'memory\_team\_%'"
        )
    )
    return {row[0] for row in rows.all()}


async def test_index_large_teams_builds_each_index_once_and_drops_those_of_deleted_teams(
    world: World,
) -> None:
    async with world.factory() as session:
        indexed = await team_indexes(session)
        names = set()
        for team_id in [world.teams["mid"], world.teams["large"], world.crowd]:
            result = await session.exec(
                text("SELECT index_name, lists FROM memory_team_index(:team)"),
                params={"team": team_id},
            )
            hnsw, lists = result.one()
            names |= {hnsw, f"{hnsw}_{lists}"}
    assert indexed == names

    again = await index_large_teams(world.engine)
    assert (again.built, again.dropped) == ([], 0)

    async with world.factory() as session:
        owner_id = (await session.exec(text('SELECT id FROM "user" LIMIT 1'))).one()[0]
        doomed = await TeamRepository(session).create(
            TeamCreate(name="Doomed", slug="doomed", owner_id=owner_id)
        )
        rng = np.random.default_rng(5)
        await MemoryRepository(session).add_many(
            {"team_id": doomed.id, "memory_type": "semantic", "content": f"d{n}", "embedding": v}
            for n, v in enumerate(unit_rows(rng, 600).tolist())
        )
        await session.commit()
    await finish_index_builds(world.engine)  # the commit built its index
    async with world.factory() as session:
        doomed_index = (await team_indexes(session)) - indexed
    assert len(doomed_index) == 2  # its HNSW and IVF indexes
    assert (await index_large_teams(world.engine)) == TeamIndexes(built=[], dropped=0)
    async with world.factory() as session:
        await TeamRepository(session).delete(doomed.id)
        await session.commit()
    dropped = await index_large_teams(world.engine)
    assert (dropped.built, dropped.dropped) == ([], 2)
    async with world.factory() as session:
        assert await team_indexes(session) == indexed


async def test_index_large_teams_refuses_a_negative_bound(world: World) -> None:
    with pytest.raises(ValueError, match="min_rows must be at least 0, got -1"):
        await index_large_teams(world.engine, min_rows=-1)
