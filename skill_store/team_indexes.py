"""An HNSW index per large team, so that no other team can starve a team's vector search.

A search of a team with more than `EXACT_SEARCH_MAX_ROWS` candidates walks the team's own
index (a partial index on `memory` named by the database function `memory_team_index_name`).
Until that index exists the search is exact: right, but slower as the team grows. Run
`index_large_teams` (or `skill-store db index`) after bulk imports and from time to time.
"""

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from skill_store.models.memory import TEAM_INDEX_PREFIX
from skill_store.repositories.memory import EXACT_SEARCH_MAX_ROWS

INDEX_BUILD_MEMORY = "1GB"
"""`maintenance_work_mem` of the connection that builds indexes: an HNSW graph built in
memory is several times faster to build than one that spills to disk."""

# Teams past the bound without a valid index, with the statement that builds it.
_TEAMS_TO_INDEX = text("""
SELECT t.team_id, format(
    'CREATE INDEX CONCURRENTLY %I ON memory USING hnsw (embedding vector_cosine_ops)'
    ' WITH (m = 16, ef_construction = 64) WHERE team_id = %L AND status = ''active''',
    memory_team_index_name(t.team_id), t.team_id)
FROM (
    SELECT team_id FROM memory
    WHERE status = 'active' AND embedding IS NOT NULL
    GROUP BY team_id HAVING count(*) > :min_rows
) AS t
WHERE NOT EXISTS (
    SELECT FROM pg_index AS i
    WHERE i.indexrelid = to_regclass(memory_team_index_name(t.team_id)) AND i.indisvalid
)
ORDER BY t.team_id""")

_TEAM_INDEX_NAMES = TEAM_INDEX_PREFIX.replace("_", r"\_") + "%"
"""The names of the teams' indexes, as a LIKE pattern."""

# Indexes to drop: those of teams that no longer exist, and invalid ones (a build that
# failed or was cancelled leaves its index behind, invalid).
_INDEXES_TO_DROP = text(r"""
SELECT format('DROP INDEX CONCURRENTLY %I', c.relname)
FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
WHERE i.indrelid = 'memory'::regclass
  AND c.relname LIKE :pattern
  AND (NOT i.indisvalid OR NOT EXISTS (
      SELECT FROM team WHERE memory_team_index_name(team.id) = c.relname
  ))
ORDER BY c.relname""")


@dataclass(frozen=True)
class TeamIndexes:
    """What `index_large_teams` did."""

    built: list[uuid.UUID]
    """The teams whose index was built, in id order."""
    dropped: int
    """How many indexes of deleted teams, or left invalid by a failed build, were dropped."""


async def index_large_teams(
    engine: AsyncEngine, *, min_rows: int = EXACT_SEARCH_MAX_ROWS
) -> TeamIndexes:
    """Build the HNSW index of every team with more than `min_rows` searchable memories.

    Each index is built with `CREATE INDEX CONCURRENTLY`, so writes go on meanwhile. Indexes
    of teams that no longer exist, and invalid ones, are dropped first. Teams that have an
    index keep it, even when they shrink.

    Args:
        engine: The database, e.g. from `get_engine()`.
        min_rows: Teams with more active memories with an embedding than this get an index.
            The default is the size past which a search stops scanning exactly.

    Returns:
        The teams indexed and the number of indexes dropped.

    Raises:
        ValueError: If `min_rows` is negative.
    """
    if min_rows < 0:
        raise ValueError(f"min_rows must be at least 0, got {min_rows}")
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(
            text("SELECT set_config('maintenance_work_mem', :memory, false)"),
            {"memory": INDEX_BUILD_MEMORY},
        )
        try:
            drops = (
                (await autocommit.execute(_INDEXES_TO_DROP, {"pattern": _TEAM_INDEX_NAMES}))
                .scalars()
                .all()
            )
            for statement in drops:
                await autocommit.exec_driver_sql(statement)
            builds = (await autocommit.execute(_TEAMS_TO_INDEX, {"min_rows": min_rows})).all()
            for _team_id, statement in builds:
                await autocommit.exec_driver_sql(statement)
        finally:
            await autocommit.execute(text("RESET maintenance_work_mem"))
    return TeamIndexes(built=[team_id for team_id, _ in builds], dropped=len(drops))
