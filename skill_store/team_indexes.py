"""Each large team's own vector indexes: built without an operator, rebuilt after bulk loads.

A search of a team with more than `EXACT_SEARCH_MAX_ROWS` candidates walks the team's own
indexes of its embeddings as half-precision vectors, partial indexes on `memory` built by the
database function `memory_team_index_definitions`: an HNSW index (`memory_team_<key>_<covers>`)
for the searches it can be trusted with, and an IVF index (`..._<covers>_<lists>`, one list
per 125 memories when built, as many as its build's memory allows) for the crowded ones (see
migration 0016). The key is
`memory_team_key(team_id)`, a hash, so the catalogs every role reads show no team's id;
`covers` is the last bulk-load batch the indexes hold.

- **Growth.** After a transaction that wrote memories commits, the process that wrote checks
  each team it wrote to, in the background on its event loop (unless the setting
  `INDEX_BUILDS` is `maintain`), and builds the index of a team
  past the bound that has none (`CREATE INDEX CONCURRENTLY`: writes and searches go on, and
  searches are exact until the index is valid), and a new IVF index for a team that has
  grown so that a new one would have twice its lists. `skill-store maintain` does the same
  for every team.
- **Bulk loads.** `MemoryRepository.add_many` of at least `LOAD_BATCH_MIN_ROWS` memories of a
  team, and at least `LOAD_BATCH_SHARE` of its index's rows, marks them with a load batch that
  the index does not hold: they add nothing to its graph row by row, and searches read them
  exactly beside it. The check after commit then builds new indexes that hold them, and
  drops the old ones once the new ones are valid.
- **Shrinking.** A team keeps its index when it shrinks: at most `EXACT_SEARCH_MAX_ROWS`
  candidates are searched exactly whatever indexes exist, and keeping the index spares a
  rebuild when the team grows again. Indexes of deleted teams, those left invalid by a build
  that failed or was cancelled, and those newer indexes replaced are dropped.

Builds take turns, across processes too (PostgreSQL builds one index at a time on a table):
each holds the advisory lock `INDEX_LOCK`.
"""

import asyncio
import logging
import uuid
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.settings import get_settings

EXACT_SEARCH_MAX_ROWS = 500
"""Teams with at most this many candidate memories are searched exactly, without an index.

An exact scan reads every candidate's embedding (about 8 µs a row at 1536 dimensions on the
benchmark machine, see BENCHMARKS.md), so past this size the team's own HNSW index is faster.
"""

LOAD_BATCH_MIN_ROWS = 1000
"""Fewest memories of one team that an `add_many` call loads beside the team's index."""

LOAD_BATCH_SHARE = 0.1
"""Fewest memories of one team that an `add_many` call loads beside the team's index, as a
share of the index's rows: below it, adding them to the graph costs less than a new index."""

INDEX_BUILD_MEMORY = "1GB"
"""`maintenance_work_mem` of the connection that builds indexes: an HNSW graph built in
memory is several times faster to build than one that spills to disk, and an IVF index's
lists are as many as its k-means fits in it (about 1,800 at 1,536 dimensions)."""

INDEX_LOCK = 0x736B696C6C696478  # "skillidx"
"""Key of the session-level advisory lock that index builds and drops on `memory` hold."""

LOCK_POLL_SECONDS = 0.5
"""How often a build waiting for another process's to finish asks again."""

WRITTEN_TEAMS = "skill_store.written_teams"
"""Key of `Session.info`: the engine and the teams whose memories the transaction wrote."""

logger = logging.getLogger(__name__)

# Whether the team needs indexes built: past the bound without a valid HNSW index, with rows
# of load batches its indexes do not hold, without a valid IVF index of the same batches, or
# grown so that a new IVF index would have twice its lists; and its last load batch.
_DUE = text("""
SELECT CASE
           WHEN x.covers IS NULL THEN (
               SELECT count(*) FROM (
                   SELECT FROM memory AS m
                   WHERE m.team_id = :team AND m.status = 'active' AND m.embedding IS NOT NULL
                   LIMIT :min_rows + 1) AS c) > :min_rows
           ELSE b.last_batch > x.covers OR x.lists IS NULL
                OR memory_ivf_lists(x.row_count::bigint, (
                       SELECT a.atttypmod FROM pg_attribute AS a
                       WHERE a.attrelid = 'memory'::regclass AND a.attname = 'embedding'
                   )) >= 2 * x.lists
       END,
       b.last_batch
FROM memory_team_index(:team) AS x
CROSS JOIN (
    SELECT max(m.load_batch) AS last_batch FROM memory AS m
    WHERE m.team_id = :team AND m.load_batch IS NOT NULL
) AS b""")

# The keys of every team index.
_INDEX_KEYS = text(r"""
SELECT DISTINCT ('x' || split_part(c.relname, '_', 3))::bit(64)::bigint
FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'memory'::regclass AND c.relname LIKE 'memory\_team\_%'""")

# The indexes of one key that no team needs: all of them if no team has the key; else the
# invalid ones, and (unless :keep_valid) the valid ones but the newest of each kind (HNSW:
# `memory_team_<key>_<covers>`; IVF: `..._<covers>_<lists>`).
_UNNEEDED = text(r"""
WITH indexes AS (
    SELECT c.relname, i.indisvalid AS valid,
           split_part(c.relname, '_', 4)::bigint AS covers,
           nullif(split_part(c.relname, '_', 5), '')::integer AS lists
    FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
    WHERE i.indrelid = 'memory'::regclass
      AND c.relname LIKE 'memory\_team\_' || lpad(to_hex(CAST(:key AS bigint)), 16, '0') || '\_%'
), newest AS (
    SELECT DISTINCT ON (y.lists IS NULL) y.relname FROM indexes AS y WHERE y.valid
    ORDER BY y.lists IS NULL, y.covers DESC, y.lists DESC
)
SELECT x.relname FROM indexes AS x
WHERE NOT EXISTS (SELECT FROM team AS t WHERE memory_team_key(t.id) = :key)
   OR NOT x.valid
   OR (NOT :keep_valid AND x.relname NOT IN (SELECT n.relname FROM newest AS n))
ORDER BY x.relname""")

# The statements that build the team's indexes holding load batches up to :covers, but
# those whose index (same name: same batches, same lists) is there already.
_DEFINITIONS = text("""
SELECT d.statement
FROM unnest(memory_team_index_definitions(:team, :covers, memory_team_lists(:team), true))
     AS d (statement)
WHERE to_regclass(split_part(d.statement, ' ', 4)) IS NULL""")


@dataclass(frozen=True)
class TeamIndexes:
    """What `index_large_teams` did."""

    built: list[uuid.UUID] = field(default_factory=list)
    """The teams whose index was built (or rebuilt to hold their load batches), in id order."""
    dropped: int = 0
    """Indexes dropped: of deleted teams, left invalid by a failed build, or replaced."""


async def index_large_teams(
    engine: AsyncEngine,
    *,
    min_rows: int = EXACT_SEARCH_MAX_ROWS,
    teams: Iterable[uuid.UUID] | None = None,
) -> TeamIndexes:
    """Build the index of every team that needs one, and drop the indexes no team needs.

    A team needs an index when it has more than `min_rows` searchable memories and no valid
    index, or when it has memories of a load batch its index does not hold. Each index is
    built with `CREATE INDEX CONCURRENTLY` on a connection of its own, so writes and searches
    go on meanwhile. Builds on `memory` take turns (PostgreSQL builds one at a time on a
    table): this call waits while another process builds.

    Args:
        engine: The database, e.g. from `get_engine()`.
        min_rows: Teams with more active memories with an embedding than this get an index.
            The default is the size past which a search stops scanning exactly.
        teams: Only these teams' indexes (default: every team's, and every index's).

    Returns:
        The teams indexed and the number of indexes dropped.

    Raises:
        ValueError: If `min_rows` is negative.
    """
    if min_rows < 0:
        raise ValueError(f"min_rows must be at least 0, got {min_rows}")
    chosen = None if teams is None else set(teams)
    built: list[uuid.UUID] = []
    dropped = 0
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await lock_index_builds(autocommit)
        try:
            await autocommit.execute(
                text("SELECT set_config('maintenance_work_mem', :memory, false)"),
                {"memory": INDEX_BUILD_MEMORY},
            )
            if chosen is None:
                for key in (await autocommit.execute(_INDEX_KEYS)).scalars().all():
                    dropped += await _drop_unneeded(autocommit, key, keep_valid=False)
                chosen = set((await autocommit.execute(text("SELECT id FROM team"))).scalars())
            for team_id in sorted(chosen):
                parameters = {"team": team_id, "min_rows": min_rows}
                due, last_batch = (await autocommit.execute(_DUE, parameters)).one()
                if due:
                    dropped += await _build(autocommit, team_id, last_batch)
                    built.append(team_id)
        finally:
            await autocommit.execute(text("RESET maintenance_work_mem"))
            await autocommit.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": INDEX_LOCK})
    return TeamIndexes(built=built, dropped=dropped)


async def lock_index_builds(connection: AsyncConnection) -> None:
    """Take the lock of index builds on `memory` (`INDEX_LOCK`), waiting for it by polling.

    The connection holds it until it calls `pg_advisory_unlock(INDEX_LOCK)` or closes.

    Not by `pg_advisory_lock`: a statement that waits holds a snapshot, which the build
    that holds the lock would wait for in turn (a deadlock).
    """
    lock = text("SELECT pg_try_advisory_lock(:key)")
    while not (await connection.execute(lock, {"key": INDEX_LOCK})).scalar_one():
        await asyncio.sleep(LOCK_POLL_SECONDS)


async def _drop_unneeded(connection: AsyncConnection, key: int, *, keep_valid: bool) -> int:
    """Drop the indexes of the key that no team needs (see `_UNNEEDED`); how many."""
    parameters = {"key": key, "keep_valid": keep_valid}
    names = (await connection.execute(_UNNEEDED, parameters)).scalars().all()
    for name in names:
        await connection.exec_driver_sql(f'DROP INDEX CONCURRENTLY "{name}"')
    return len(names)


async def _build(connection: AsyncConnection, team_id: uuid.UUID, last_batch: int | None) -> int:
    """Build the team's indexes, holding its rows of load batches up to `last_batch`.

    Returns:
        How many of the team's indexes were dropped: a failed build's, and those replaced.
    """
    key = await connection.execute(text("SELECT memory_team_key(:t)"), {"t": team_id})
    team_key = key.scalar_one()
    dropped = await _drop_unneeded(connection, team_key, keep_valid=True)
    parameters = {"team": team_id, "covers": last_batch or 0}
    statements = (await connection.execute(_DEFINITIONS, parameters)).scalars().all()
    if not statements:  # the team grew less than its stale row count said: count it afresh
        await connection.execute(text("ANALYZE memory"))
    for statement in statements:
        await connection.exec_driver_sql(statement)
    dropped += await _drop_unneeded(connection, team_key, keep_valid=False)
    if last_batch is not None:
        # After a bulk load the planner's statistics are stale, and the full-text index's
        # new entries wait in its pending list (which makes the planner shun it).
        await connection.execute(text("SELECT gin_clean_pending_list('idx_memory_team_text')"))
        await connection.execute(text("ANALYZE memory"))
    return dropped


class _Builds:
    """The index work one engine's process was asked for, done in the background in turn."""

    def __init__(self) -> None:
        self.teams: set[uuid.UUID] = set()
        self.task: asyncio.Task[None] | None = None

    def request(self, engine: AsyncEngine, teams: Iterable[uuid.UUID]) -> None:
        self.teams.update(teams)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run(engine))

    async def _run(self, engine: AsyncEngine) -> None:
        while self.teams:
            teams, self.teams = self.teams, set()
            try:
                await index_large_teams(engine, teams=teams)
            except Exception as error:  # the writes are done; a build is retried later
                logger.warning(
                    "could not build the search index of teams %s: %s (`skill-store maintain`"
                    " builds it)",
                    ", ".join(map(str, sorted(teams))),
                    error,
                )


_BUILDS: weakref.WeakKeyDictionary[sa.Engine, _Builds] = weakref.WeakKeyDictionary()


def written(session: AsyncSession, teams: Iterable[uuid.UUID]) -> None:
    """Note that the session's transaction wrote memories of `teams`.

    Once it commits, their indexes are checked (if the session is bound to an engine or a
    connection: the builds need an engine).
    """
    engine = async_engine(session)
    if engine is not None:
        noted: tuple[AsyncEngine, set[uuid.UUID]] = session.info.setdefault(
            WRITTEN_TEAMS, (engine, set())
        )
        noted[1].update(teams)


def async_engine(session: AsyncSession) -> AsyncEngine | None:
    """The engine of the session's bind, if it has one."""
    bind = session.bind
    return bind.engine if isinstance(bind, AsyncConnection) else bind


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint's release: the transaction goes on
        return
    noted = session.info.pop(WRITTEN_TEAMS, None)
    if noted is None:
        return
    engine, teams = noted
    if get_settings().index_builds != "background":
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no event loop to build on: `skill-store maintain` will
        return
    _BUILDS.setdefault(engine.sync_engine, _Builds()).request(engine, teams)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(WRITTEN_TEAMS, None)


async def finish_index_builds(engine: AsyncEngine) -> None:
    """Wait for the index builds this process started on `engine` after its writes.

    Call it before the process exits (a build cut short leaves an invalid index, which the
    next build or `skill-store maintain` drops), or to search at indexed speed at once.
    """
    builds = _BUILDS.get(engine.sync_engine)
    while builds is not None and builds.task is not None and not builds.task.done():
        await asyncio.shield(builds.task)
