"""Moving a live store to another embedder, its model and its dimensions both.

`migrate_embeddings` (`skill-store embeddings migrate`) gives every memory that has a vector
a new one, the embedding of its `content` by the new embedder, while the store is in use.
Its progress is kept in the database (migration 0017), so a run that is killed resumes where
it stopped when it is run again:

1. **Begin.** The shadow columns `memory.embedding_next`, of the new dimension, and
   `memory.embedding_model_next` are added, with a trigger that clears them when a memory's
   content or vector changes.
2. **Fill.** Pass after pass in key order, a batch at a time: one `embed` call, then one
   statement (its own transaction) that writes the batch's vectors, except to a memory whose
   content changed since it was read. A memory already of the new model and dimension is
   copied, not embedded. Passes go on until the memories left (written or changed meanwhile)
   fit in one batch.
3. **Indexes.** Each team that has indexes of its own gets the same on the new column, built
   concurrently (`memory_team_index_definitions`), and so does `idx_memory_embedder`. Builds
   take turns under `INDEX_LOCK`, held until the switch, so that no other index is built
   meanwhile.
4. **Switch.** One transaction locks the memory table against writes (searches go on), embeds
   the memories left, writes an audit row for each memory whose vector changes (by `MIGRATOR`,
   the reason naming both embedders), and puts the new columns and their indexes in the place
   of the old. Searches use the old vectors until it commits, the new ones afterwards.

With `team_id`, one team moves, if the dimension stays (the column's type is the whole
table's). Its memories of another model are filled alone, then take their new vectors in one
UPDATE, under a new load batch when the team has an index: the index gets none of them row by
row, searches read them exactly beside it, and `index_large_teams` rebuilds it at the end.
"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from pgvector import Vector as PgVector
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from skill_store.database import begin
from skill_store.embeddings import Embedder, embedder_from_settings
from skill_store.errors import EmbeddingMigrationError, EmbeddingServiceError, NotFoundError
from skill_store.models._types import as_vector
from skill_store.repositories.base import translated_errors
from skill_store.settings import MAX_EMBEDDING_DIMENSIONS
from skill_store.team_indexes import (
    INDEX_BUILD_MEMORY,
    INDEX_LOCK,
    index_large_teams,
    lock_index_builds,
)

T = TypeVar("T")

MIGRATOR = "skill-store embeddings migrate"
"""The actor the audit names for the vectors an embedder migration changes."""

BATCH_SIZE = 256
"""Memories embedded by one `embed` call and written by one transaction."""

MIGRATION_LOCK = 0x736B696C6C656D62  # "skillemb"
"""Key of the session-level advisory lock a running embedder migration holds."""

LOCK_TIMEOUT = "2s"
"""How long a statement of the migration waits for a lock on `memory` before it gives up and
tries again later: meanwhile the statements queued behind it wait too."""

LOCK_ATTEMPTS = 30
LOCK_RETRY_SECONDS = 1.0

_LOCK_NOT_AVAILABLE = "55P03"
_NIL = uuid.UUID(int=0)
_LAST = uuid.UUID(int=2**128 - 1)

logger = logging.getLogger(__name__)

# The column's dimension, the migration in progress (NULLs if none), whether :team exists.
_STATE = text("""
SELECT (SELECT a.atttypmod FROM pg_attribute AS a
        WHERE a.attrelid = 'memory'::regclass AND a.attname = 'embedding') AS column_dimensions,
       p.model, p.dimensions, p.team,
       EXISTS (SELECT FROM team AS t WHERE t.id = CAST(:team AS uuid)) AS team_exists
FROM memory_embedder_migration() AS p""")

# The memories the migration moves, by their model then: of another model or dimension
# (every memory of another dimension) in the team or in every team.
_SCOPE = text("""
SELECT m.embedding_model, count(*)
FROM memory AS m
WHERE m.embedding IS NOT NULL
  AND m.team_id BETWEEN :team_from AND :team_to
  AND (NOT :same_dimensions OR m.embedding_model IS DISTINCT FROM :model)
GROUP BY m.embedding_model
ORDER BY m.embedding_model NULLS FIRST""")

# Memories left without a new vector, and those with one.
_COUNTS = text("""
SELECT count(*) FILTER (WHERE m.embedding_model_next IS NULL
                          AND (:all_teams OR m.embedding_model IS DISTINCT FROM :model)),
       count(*) FILTER (WHERE m.embedding_model_next IS NOT NULL)
FROM memory AS m
WHERE m.embedding IS NOT NULL AND m.team_id BETWEEN :team_from AND :team_to""")

# The next batch of memories left, from the key (:team_from, :id_from) on; `kept`: its vector
# is of the new model and dimension already, and is copied.
_FETCH = text("""
SELECT m.team_id, m.id, m.content, md5(m.content) AS digest,
       :same_dimensions AND m.embedding_model IS NOT DISTINCT FROM :model AS kept
FROM memory AS m
WHERE (m.team_id, m.id) >= (:team_from, :id_from) AND m.team_id <= :team_to
  AND m.embedding IS NOT NULL AND m.embedding_model_next IS NULL
  AND (:all_teams OR m.embedding_model IS DISTINCT FROM :model)
ORDER BY m.team_id, m.id
LIMIT :batch""")

# A batch's new vectors (NULL: the memory's own is kept), except where the memory changed
# since it was read; whether each written one was kept.
_WRITE = text("""
UPDATE memory AS m
SET embedding_next = coalesce(u.embedding, m.embedding), embedding_model_next = :model
FROM unnest(CAST(:teams AS uuid[]), CAST(:ids AS uuid[]), CAST(:digests AS text[]),
            CAST(:embeddings AS vector[])) AS u (team_id, id, digest, embedding)
WHERE m.team_id = u.team_id AND m.id = u.id
  AND m.embedding IS NOT NULL AND m.embedding_model_next IS NULL
  AND md5(m.content) = u.digest
  AND (u.embedding IS NOT NULL OR m.embedding_model = :model)
RETURNING u.embedding IS NULL""")

_SHADOW_INDEXES = r"""
SELECT c.relname, i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'memory'::regclass AND c.relname LIKE 'memory\_next\_%'"""

# The statements that build, on the new column, the indexes of each team that has its own,
# holding its load batches so far: but those built already (their name is taken).
_TEAM_INDEX_DEFINITIONS = text("""
SELECT d.statement
FROM team AS t
CROSS JOIN LATERAL memory_team_index(t.id) AS x
CROSS JOIN LATERAL unnest(memory_team_index_definitions(
    t.id,
    (SELECT coalesce(max(m.load_batch), 0) FROM memory AS m WHERE m.team_id = t.id),
    memory_team_lists(t.id, true),
    true,
    true)) WITH ORDINALITY AS d (statement, position)
WHERE x.covers IS NOT NULL AND to_regclass(split_part(d.statement, ' ', 4)) IS NULL
ORDER BY t.id, d.position""")

_EMBEDDER_INDEX = (
    "CREATE INDEX CONCURRENTLY memory_next_embedder ON memory (team_id, embedding_model_next)"
)


@dataclass(frozen=True)
class EmbeddingMigrationProgress:
    """How far an embedder migration is, passed to its `on_progress` after each batch."""

    done: int
    """Memories given a new vector by this call so far."""
    total: int
    """Memories this call gives a new vector, as far as known (writes meanwhile add some)."""
    seconds: float
    """Since the call began."""

    @property
    def rate(self) -> float:
        """Memories a second so far."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first batch."""
        return (self.total - self.done) / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class EmbeddingMigrationReport:
    """What an embedder migration did."""

    model: str
    """The new embedder's model."""
    dimensions: int
    previous_models: list[str | None]
    """The models of the vectors it replaced (None: unknown), by name."""
    previous_dimensions: int
    team_id: uuid.UUID | None
    """The one team it moved; None: every team."""
    embedded: int
    """Memories this call embedded."""
    copied: int
    """Memories whose vector was of the new model and dimension already, carried over."""
    resumed: int
    """Memories an earlier, interrupted call had given their new vector."""
    embed_calls: int
    switched: int
    """Memories whose vector changed at the switch, each with an audit row."""
    indexes_built: int
    """Team indexes built on the new vectors before the switch, which made them the teams'."""
    indexes_rebuilt: int
    """Team indexes built after the switch: the moved team's, or ones that came due."""
    index_seconds: float
    """Spent building team indexes, before and after the switch."""
    switch_seconds: float
    """How long the switch kept writes to `memory` waiting."""
    seconds: float


@dataclass(frozen=True)
class _Target:
    model: str
    dimensions: int
    team_id: uuid.UUID | None

    def describe(self) -> str:
        whom = "every team" if self.team_id is None else f"team {self.team_id}"
        return f"{self.model!r} ({self.dimensions} dimensions) of {whom}"


async def migrate_embeddings(
    engine: AsyncEngine,
    embedder: Embedder | None = None,
    *,
    team_id: uuid.UUID | None = None,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[EmbeddingMigrationProgress], None] | None = None,
) -> EmbeddingMigrationReport:
    """Give every memory with a vector a new one by `embedder`, and switch to them at once.

    See the module for the steps. Searches go on throughout: with the old vectors before
    the switch, the new ones after it (processes that search must then use the new embedder:
    `recall` and `retrieve` with the old one raise `EmbeddingModelError`). Killed or failed
    midway, the call keeps the batches it wrote; called again with the same embedder, it
    resumes.

    Args:
        engine: The database, e.g. from `get_engine()`.
        embedder: The new embedder; by default `embedder_from_settings()`.
        team_id: Only this team's memories, if the dimension stays.
        batch_size: Memories per `embed` call and per transaction.
        on_progress: Called after each batch.

    Returns:
        What was done.

    Raises:
        EmbeddingMigrationError: If there is nothing to do, the embedder's dimension exceeds
            `MAX_EMBEDDING_DIMENSIONS`, `team_id` is given with another dimension, a migration to
            another embedder (or of other teams) is in progress, or another call is running.
            Nothing is changed. Also if the memory table stays locked by other transactions
            through every attempt of a step: what was done stays.
        NotFoundError: If the team does not exist.
        EmbeddingServiceError: If the embedder fails; what was done stays.
        ValueError: If `batch_size` is less than 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    embedder = embedder or embedder_from_settings()
    if not 1 <= embedder.dimensions <= MAX_EMBEDDING_DIMENSIONS:
        raise EmbeddingMigrationError(
            f"the embedder's vectors have {embedder.dimensions} dimensions: the memories' vector"
            f" index takes 1 to {MAX_EMBEDDING_DIMENSIONS}"
        )
    async with _running(engine):
        migration = await _Migration.prepare(engine, embedder, team_id, batch_size, on_progress)
        return await migration.run()


async def abandon_embedding_migration(engine: AsyncEngine) -> bool:
    """Drop the embedder migration in progress: its new vectors, their indexes, its trigger.

    The memories keep the vectors they had; searches are not affected.

    Returns:
        Whether there was one to drop.

    Raises:
        EmbeddingMigrationError: If a migration is running.
    """
    async with _running(engine):
        async with begin(engine) as connection, translated_errors():
            state = (await connection.execute(_STATE, {"team": None})).one()
        if state.model is None:
            return False
        await _with_lock_retries(
            engine, lambda c: c.execute(text("SELECT end_memory_embedder_migration()"))
        )
        return True


@asynccontextmanager
async def _running(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold `MIGRATION_LOCK` for the block, or refuse if another process holds it."""
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        lock = text("SELECT pg_try_advisory_lock(:key)")
        if not (await autocommit.execute(lock, {"key": MIGRATION_LOCK})).scalar_one():
            raise EmbeddingMigrationError("another embedder migration is running on this database")
        try:
            yield
        finally:
            await autocommit.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK}
            )


async def _with_lock_retries(
    engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    """Run `work` in a transaction whose waits for locks are bounded, again while they fail."""
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with begin(engine) as connection:
                await connection.execute(
                    text("SELECT set_config('lock_timeout', :timeout, true)"),
                    {"timeout": LOCK_TIMEOUT},
                )
                return await work(connection)
        except DBAPIError as error:
            if getattr(error.orig, "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            logger.info("the memory table is busy (attempt %d of %d)", attempt, LOCK_ATTEMPTS)
        await asyncio.sleep(LOCK_RETRY_SECONDS)
    raise EmbeddingMigrationError(
        f"other transactions kept the memory table locked through {LOCK_ATTEMPTS} attempts;"
        " what was done stays: run the migration again to resume it"
    )


def _next_key(team_id: uuid.UUID, memory_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The smallest (team, id) key after this one, in PostgreSQL's order of uuids."""
    if memory_id != _LAST:
        return team_id, uuid.UUID(int=memory_id.int + 1)
    if team_id != _LAST:
        return uuid.UUID(int=team_id.int + 1), _NIL
    return None


class _Migration:
    """One call of `migrate_embeddings`, once its target is known and begun."""

    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        target: _Target,
        previous: tuple[list[str | None], int],
        batch_size: int,
        on_progress: Callable[[EmbeddingMigrationProgress], None] | None,
    ) -> None:
        self.engine = engine
        self.embedder = embedder
        self.target = target
        self.previous_models, self.previous_dimensions = previous
        self.batch_size = batch_size
        self.on_progress = on_progress
        team = target.team_id
        self.keys = {"team_from": team or _NIL, "team_to": team or _LAST}
        self.filters = {
            "model": target.model,
            "all_teams": team is None,
            "same_dimensions": target.dimensions == self.previous_dimensions,
        }
        self.started = time.perf_counter()
        self.embedded = self.copied = self.resumed = self.calls = self.total = 0

    @classmethod
    async def prepare(
        cls,
        engine: AsyncEngine,
        embedder: Embedder,
        team_id: uuid.UUID | None,
        batch_size: int,
        on_progress: Callable[[EmbeddingMigrationProgress], None] | None,
    ) -> "_Migration":
        """Check the call against the store and begin the migration, or refuse."""
        target = _Target(embedder.model, embedder.dimensions, team_id)
        async with begin(engine) as connection, translated_errors():
            state = (await connection.execute(_STATE, {"team": team_id})).one()
            dimensions = int(state.column_dimensions)
            if team_id is not None and not state.team_exists:
                raise NotFoundError("team", team_id)
            scope = {
                "team_from": team_id or _NIL,
                "team_to": team_id or _LAST,
                "model": target.model,
                "same_dimensions": target.dimensions == dimensions,
            }
            groups = (await connection.execute(_SCOPE, scope)).all()
        in_progress = (
            None if state.model is None else _Target(state.model, state.dimensions, state.team)
        )
        if in_progress is not None and in_progress != target:
            raise EmbeddingMigrationError(
                f"a migration to {in_progress.describe()} is in progress: run it again with"
                " that embedder to finish it, or abandon it (`skill-store embeddings abandon`)"
            )
        if in_progress is None:
            if team_id is not None and target.dimensions != dimensions:
                raise EmbeddingMigrationError(
                    f"one team cannot move to {target.dimensions} dimensions: the vector column"
                    f" has {dimensions} for every team; migrate every team instead"
                )
            if not groups and (team_id is not None or target.dimensions == dimensions):
                whose = "every memory" if team_id is None else "every memory of the team"
                raise EmbeddingMigrationError(
                    f"nothing to do: {whose} with a vector was embedded by {target.model!r}"
                    f" with {dimensions} dimensions"
                )
            await _with_lock_retries(
                engine,
                lambda c: c.execute(
                    text("SELECT begin_memory_embedder_migration(:dimensions, :model, :team)"),
                    {"dimensions": target.dimensions, "model": target.model, "team": team_id},
                ),
            )
        previous = ([model for model, _count in groups], dimensions)
        return cls(engine, embedder, target, previous, batch_size, on_progress)

    async def run(self) -> EmbeddingMigrationReport:
        """Fill, build the indexes, switch; the report."""
        async with begin(self.engine) as connection:
            left, self.resumed = (await connection.execute(_COUNTS, self.parameters())).one()
        self.total = left
        await self.fill()
        if self.target.team_id is None:
            async with self.autocommit() as connection:
                await lock_index_builds(connection)
                try:
                    building = time.perf_counter()
                    built = await self.build_indexes(connection)
                    index_seconds = time.perf_counter() - building
                    await self.fill()
                    switched, switch_seconds = await self.switch()
                finally:
                    await connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": INDEX_LOCK}
                    )
                await connection.execute(text("ANALYZE memory"))
            teams = None
        else:
            built, index_seconds = 0, 0.0
            switched, switch_seconds = await self.switch()
            teams = [self.target.team_id]
        building = time.perf_counter()
        rebuilt = await index_large_teams(self.engine, teams=teams)
        index_seconds += time.perf_counter() - building
        return EmbeddingMigrationReport(
            model=self.target.model,
            dimensions=self.target.dimensions,
            previous_models=self.previous_models,
            previous_dimensions=self.previous_dimensions,
            team_id=self.target.team_id,
            embedded=self.embedded,
            copied=self.copied,
            resumed=self.resumed,
            embed_calls=self.calls,
            switched=switched,
            indexes_built=built,
            indexes_rebuilt=len(rebuilt.built),
            index_seconds=index_seconds,
            switch_seconds=switch_seconds,
            seconds=time.perf_counter() - self.started,
        )

    def parameters(self, **more: Any) -> dict[str, Any]:
        return {**self.keys, **self.filters, **more}

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose every statement is a transaction of its own."""
        async with self.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")

    async def fill(self) -> None:
        """Pass after pass, until the memories left fit in one batch (the switch embeds them)."""
        async with self.autocommit() as reader, self.autocommit() as writer:
            while True:
                left, _done = (await reader.execute(_COUNTS, self.parameters())).one()
                self.total = max(self.total, self.embedded + self.copied + left)
                if left <= self.batch_size:
                    return
                await self.fill_pass(reader, writer)

    async def fill_pass(self, reader: AsyncConnection, writer: AsyncConnection) -> None:
        """Give a new vector to each memory left, in key order, a batch at a time.

        With two connections, a batch is embedded while the next one is read and the one
        before it written.
        """
        concurrent = reader is not writer
        rows = await self.fetch(reader, (self.keys["team_from"], _NIL))
        reading: asyncio.Task[Sequence[Any]] | None = None
        writing: asyncio.Task[None] | None = None
        try:
            while rows:
                after = _next_key(rows[-1].team_id, rows[-1].id)
                if len(rows) < self.batch_size:
                    after = None
                if concurrent:
                    reading = asyncio.create_task(self.fetch(reader, after))
                    # The read and the write go out before an embedder that computes in
                    # this thread holds the event loop.
                    await asyncio.sleep(0)
                vectors = await self.embed([row.content for row in rows if not row.kept])
                if writing is not None:
                    await writing
                writing = asyncio.create_task(self.write(writer, rows, vectors))
                if not concurrent:
                    await writing
                rows = await (reading or self.fetch(reader, after))
                reading = None
        finally:
            for task in (reading, writing):
                if task is not None:
                    await task

    async def fetch(
        self, connection: AsyncConnection, key: tuple[uuid.UUID, uuid.UUID] | None
    ) -> Sequence[Any]:
        """The batch of memories left from `key` on (None: none)."""
        if key is None:
            return []
        parameters = self.parameters(team_from=key[0], id_from=key[1], batch=self.batch_size)
        return (await connection.execute(_FETCH, parameters)).all()

    async def embed(self, texts: list[str]) -> list[NDArray[np.float32]]:
        """The texts' vectors, in one call of the embedder, each checked."""
        if not texts:
            return []
        vectors = await self.embedder.embed(texts)
        self.calls += 1
        if len(vectors) != len(texts):
            raise EmbeddingServiceError(f"asked for {len(texts)} embeddings, got {len(vectors)}")
        return [as_vector(vector, self.target.dimensions) for vector in vectors]

    async def write(
        self, connection: AsyncConnection, rows: Sequence[Any], vectors: list[NDArray[np.float32]]
    ) -> None:
        """Write a batch's new vectors; count them and report the progress."""
        embedded = iter(vectors)
        parameters = {
            "model": self.target.model,
            "teams": [row.team_id for row in rows],
            "ids": [row.id for row in rows],
            "digests": [row.digest for row in rows],
            # Wrapped: the driver takes an array's iterable elements for a dimension of it.
            "embeddings": [None if row.kept else PgVector(next(embedded)) for row in rows],
        }
        kept = (await connection.execute(_WRITE, parameters)).scalars().all()
        self.copied += sum(kept)
        self.embedded += len(kept) - sum(kept)
        if self.on_progress is not None:
            done = self.embedded + self.copied
            seconds = time.perf_counter() - self.started
            self.on_progress(EmbeddingMigrationProgress(done, max(self.total, done), seconds))

    async def build_indexes(self, connection: AsyncConnection) -> int:
        """Build the indexes on the new columns that are missing; how many team indexes.

        `connection` holds `INDEX_LOCK`. Indexes left invalid by a build cut short are
        dropped first.
        """
        await connection.execute(
            text("SELECT set_config('maintenance_work_mem', :memory, false)"),
            {"memory": INDEX_BUILD_MEMORY},
        )
        try:
            found = await connection.execute(text(_SHADOW_INDEXES))
            indexes: dict[str, bool] = {name: valid for name, valid in found}
            for name, valid in indexes.items():
                if not valid:
                    await connection.exec_driver_sql(f'DROP INDEX CONCURRENTLY "{name}"')
            if not indexes.get("memory_next_embedder"):
                await connection.exec_driver_sql(_EMBEDDER_INDEX)
            statements = (await connection.execute(_TEAM_INDEX_DEFINITIONS)).scalars().all()
            for statement in statements:
                await connection.exec_driver_sql(statement)
        finally:
            await connection.execute(text("RESET maintenance_work_mem"))
        return len(statements)

    async def switch(self) -> tuple[int, float]:
        """Embed the memories left and switch, in one transaction.

        Returns:
            How many memories' vectors changed, and how long writes to `memory` waited.
        """
        locked = 0.0

        async def work(connection: AsyncConnection) -> int:
            nonlocal locked
            await connection.execute(text("LOCK TABLE memory IN EXCLUSIVE MODE"))
            locked = time.perf_counter()
            await self.fill_pass(connection, connection)
            if self.target.team_id is None:
                statement = text("SELECT switch_memory_embedder(:actor)")
                parameters: dict[str, Any] = {"actor": MIGRATOR}
            else:
                statement = text("SELECT switch_memory_embedder_of_team(:team, :actor)")
                parameters = {"actor": MIGRATOR, "team": self.target.team_id}
            return int((await connection.execute(statement, parameters)).scalar_one())

        switched = await _with_lock_retries(self.engine, work)
        return switched, time.perf_counter() - locked


__all__ = [
    "MIGRATOR",
    "EmbeddingMigrationProgress",
    "EmbeddingMigrationReport",
    "abandon_embedding_migration",
    "migrate_embeddings",
]
