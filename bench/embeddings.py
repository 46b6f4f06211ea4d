"""`python -m bench.embeddings`: an embedder migration's rate beside its embedder's own.

A store of `--memories` memories (`bench/data.py`'s world, its vectors of `--from-dimensions`
named by a model of the benchmark's) is moved by `migrate_embeddings` to an embedder of
`--dimensions`, for each layout of teams and each embedder:

- layouts: `small`, teams of 100 memories only (none has an index of its own), and `bench`,
  the layout of `python -m bench` (two large and five medium teams with their indexes);
- embedders: `hashing`, a `HashingEmbedder` computing in this process; `service`, an
  `OpenAIEmbedder` calling an OpenAI-compatible stub (`tests/support.py`) served by another
  process, whose vectors are the hashing embedder's; and `ready`, which answers at once with
  the hashing embedder's vectors computed beforehand: what the migration itself sustains,
  its reads and writes, when the embedder costs nothing.

The embedder alone embeds the same contents in the same batches, without a database,
before and after each migration (the machine's load varies): the mean of its two rates is the
one the migration is held to (target: at least 80 % of it). The migration's rate is given
for its whole run and without the team indexes it builds on the new vectors (an index build
costs the same whoever asks for it, see `python -m bench`).
"""

import argparse
import asyncio
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.data import TeamClass, World, team_classes
from bench.run import (
    Row,
    bench_server,
    load_average,
    progress,
    server_versions,
    shared_buffers,
    table,
)
from skill_store import (
    Embedder,
    EmbeddingMigrationReport,
    HashingEmbedder,
    MemoryRepository,
    OpenAIEmbedder,
    TeamCreate,
    TeamRepository,
    UserCreate,
    UserRepository,
    finish_index_builds,
    get_engine,
    get_session_factory,
    index_large_teams,
    migrate,
    migrate_embeddings,
)
from skill_store.embedder_migration import BATCH_SIZE
from skill_store.settings import get_settings
from tests.support import FakeEmbeddingService, create_database, drop_database, serving

OLD_MODEL = "bench-topics"
SERVICE_MODEL = "stub-hashing"
LOAD_CHUNK = 5000
LAYOUTS = ("small", "bench")
EMBEDDERS = ("hashing", "service", "ready")
HEADER = ("measurement", "memories", "rate", "embedder alone", "share", "notes")


@dataclass
class Options:
    """The command line."""

    memories: int
    from_dimensions: int
    dimensions: int
    batch_size: int
    layouts: list[str]
    embedders: list[str]
    database_url: str | None
    shared_buffers: str


@dataclass
class Result:
    """One migration's figures."""

    layout: str
    embedder: str
    teams: int
    indexed_teams: int
    embedder_seconds: float
    report: EmbeddingMigrationReport


class Ready:
    """An embedder that answers at once, with vectors computed beforehand by `prepare`."""

    model = "ready-hashing"

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self._hashing = HashingEmbedder(dimensions)
        self._vectors: dict[str, list[float]] = {}

    def prepare(self, texts: Sequence[str]) -> None:
        """Compute the vectors of `texts`, which `embed` will be asked for."""
        self._vectors = {text: self._hashing.embed_one(text) for text in texts}

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """The vectors computed beforehand."""
        return [self._vectors[text] for text in texts]


def choices(value: str, allowed: Sequence[str]) -> list[str]:
    """A comma-separated list of some of `allowed`."""
    chosen = value.split(",")
    if not set(chosen) <= set(allowed):
        raise argparse.ArgumentTypeError(f"takes some of {', '.join(allowed)}, got {value!r}")
    return chosen


def parse(argv: Sequence[str] | None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.embeddings", description=__doc__)
    parser.add_argument("--memories", type=int, default=20000, help="default: 20000")
    parser.add_argument(
        "--from-dimensions", type=int, default=384, help="the store's vectors (default: 384)"
    )
    parser.add_argument(
        "--dimensions", type=int, default=1536, help="the new embedder's (default: 1536)"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument(
        "--layouts",
        default=",".join(LAYOUTS),
        type=lambda value: choices(value, LAYOUTS),
        help=f"some of {', '.join(LAYOUTS)} (default: all)",
    )
    parser.add_argument(
        "--embedders",
        default=",".join(EMBEDDERS),
        type=lambda value: choices(value, EMBEDDERS),
        help=f"some of {', '.join(EMBEDDERS)} (default: all)",
    )
    parser.add_argument("--database-url", help="a server to use instead of a throwaway one")
    parser.add_argument("--shared-buffers", default="2GB", type=shared_buffers)
    args = parser.parse_args(argv)
    return Options(
        memories=args.memories,
        from_dimensions=args.from_dimensions,
        dimensions=args.dimensions,
        batch_size=args.batch_size,
        layouts=args.layouts,
        embedders=args.embedders,
        database_url=args.database_url,
        shared_buffers=args.shared_buffers,
    )


def serve(dimensions: int, urls: "multiprocessing.Queue[str]", stop: Event) -> None:
    """Serve the embeddings stub, with the hashing embedder's vectors, until `stop` is set."""
    hashing = HashingEmbedder(dimensions)
    with serving(FakeEmbeddingService(lambda text, _size: hashing.embed_one(text))) as service:
        urls.put(service.base_url)
        stop.wait()


def classes(layout: str, memories: int) -> list[TeamClass]:
    """The teams of a layout."""
    if layout == "small":
        return [TeamClass("small", max(1, memories // 100), 100)]
    return team_classes(memories)


async def load(engine: AsyncEngine, options: Options, layout: str) -> tuple[int, int]:
    """Migrate the database and fill it; the numbers of teams and of team indexes."""
    await migrate(engine)
    world = World(options.from_dimensions, classes(layout, options.memories))
    factory = get_session_factory(engine)
    async with factory() as session:
        owner = await UserRepository(session).create(
            UserCreate(email="bench@example.com", display_name="Bench", password="benchmark")
        )
        repository = TeamRepository(session)
        ids = []
        for number in range(sum(kind.count for kind in world.classes)):
            slug = f"team-{number}"
            team = await repository.create(TeamCreate(name=slug, slug=slug, owner_id=owner.id))
            ids.append(team.id)
        await session.commit()
    world.add_teams(ids)
    for chunk in world.memories(LOAD_CHUNK):
        async with factory() as session:
            await MemoryRepository(session).add_many(
                item | {"embedding_model": OLD_MODEL} for item in chunk
            )
            await session.commit()
    await finish_index_builds(engine)  # the builds the loads' commits started
    await index_large_teams(engine)
    async with engine.connect() as connection:
        indexed = await connection.execute(
            text("SELECT count(*) FROM team AS t WHERE (memory_team_index(t.id)).covers >= 0")
        )
        return len(world.teams), int(indexed.scalar_one())


async def measure(options: Options, layout: str, name: str, embedder: Embedder, url: str) -> Result:
    """Load the layout's store, time the embedder alone, then the migration."""
    engine = await get_engine(url)
    try:
        teams, indexed = await load(engine, options, layout)
        progress(f"{layout}: {options.memories} memories loaded, {indexed} team indexes built")
        async with engine.connect() as connection:
            found = await connection.execute(
                text("SELECT content FROM memory ORDER BY team_id, id")
            )
            contents = list(found.scalars())
        if isinstance(embedder, Ready):
            embedder.prepare(contents)
        before = await embedding_time(embedder, contents, options.batch_size)
        report = await migrate_embeddings(engine, embedder, batch_size=options.batch_size)
        progress(f"{layout}, {name}: migrated in {report.seconds:.1f} s")
        after = await embedding_time(embedder, contents, options.batch_size)
        alone = (before + after) / 2
        progress(f"{layout}, {name}: the embedder alone, {len(contents) / alone:,.0f}/s")
        return Result(layout, name, teams, indexed, alone, report)
    finally:
        await engine.dispose()


async def embedding_time(embedder: Embedder, texts: list[str], batch_size: int) -> float:
    """Seconds the embedder takes for the texts in batches, without a database."""
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        await embedder.embed(texts[start : start + batch_size])
    return time.perf_counter() - started


def rows(result: Result) -> list[Row]:
    """One migration's lines of the table: rates in memories a second."""
    report = result.report
    memories = report.embedded
    alone = memories / result.embedder_seconds
    whole = memories / report.seconds
    without = memories / (report.seconds - report.index_seconds)
    what = f"{result.layout} teams, {result.embedder}"
    if result.embedder == "ready":  # the embedder costs nothing: no share to give
        return [
            Row(
                f"{what}: migration, whole run",
                memories,
                f"{whole:,.0f}/s",
                notes=f"{report.seconds:.1f} s; the vectors computed beforehand",
            ),
            Row(
                f"{what}: migration without the index builds",
                memories,
                f"{without:,.0f}/s",
                notes=f"index builds {report.index_seconds:.1f} s",
            ),
        ]
    return [
        Row(
            f"{what}: migration, whole run",
            memories,
            f"{whole:,.0f}/s",
            f"{alone:,.0f}/s",
            f"{whole / alone:.0%}",
            f"{report.seconds:.1f} s, {report.embed_calls} embed calls; {result.teams} teams,"
            f" {result.indexed_teams} with an index of their own",
        ),
        Row(
            f"{what}: migration without the index builds",
            memories,
            f"{without:,.0f}/s",
            f"{alone:,.0f}/s",
            f"{without / alone:.0%}",
            f"index builds {report.index_seconds:.1f} s ({report.indexes_built} before the"
            f" switch, {report.indexes_rebuilt} after)",
        ),
        Row(
            f"{what}: the switch",
            memories,
            f"{report.switch_seconds:.2f} s",
            notes=f"writes to memory waited; {report.switched} audit rows written",
        ),
    ]


async def run(options: Options, service_url: str) -> None:
    """Every layout with every embedder, then the table."""
    embedders: dict[str, Embedder] = {
        "hashing": HashingEmbedder(options.dimensions),
        "service": OpenAIEmbedder(SERVICE_MODEL, "bench", options.dimensions, base_url=service_url),
        "ready": Ready(options.dimensions),
    }
    results = []
    async with bench_server(options.database_url, options.shared_buffers) as server_url:
        for layout in options.layouts:
            for name in options.embedders:
                database = f"skill_store_bench_embeddings_{layout}_{name}"
                url = await create_database(server_url, database)
                try:
                    results.append(await measure(options, layout, name, embedders[name], url))
                    versions = await server_versions(url)
                finally:
                    await drop_database(server_url, database)
    print(
        f"embedder migration — {os.cpu_count()} CPUs, PostgreSQL {versions[0]}"
        f" (shared_buffers {versions[2]}), pgvector {versions[1]}; {options.from_dimensions}"
        f" → {options.dimensions} dimensions, batches of {options.batch_size}"
    )
    print()
    print(table([row for result in results for row in rows(result)], HEADER))
    print()
    print(f"load average at the end {load_average()}")


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, start the stub service, run the benchmark."""
    options = parse(argv)
    # The migration sizes the vector column from the settings: set them before it runs.
    os.environ["EMBEDDING_DIMENSIONS"] = str(options.from_dimensions)
    get_settings.cache_clear()
    context = multiprocessing.get_context("spawn")
    urls: multiprocessing.Queue[str] = context.Queue()
    stop = context.Event()
    service = context.Process(target=serve, args=(options.dimensions, urls, stop))
    service.start()
    try:
        asyncio.run(run(options, urls.get(timeout=60)))
    finally:
        stop.set()
        service.join(timeout=30)


if __name__ == "__main__":
    main()
