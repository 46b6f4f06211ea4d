"""Vector search in one call: `search_memories`, exact for a small team, else by the HNSW index.

The function runs with its caller's rights (SECURITY INVOKER), so row-level security on
`memory` applies to it. Its SET clauses hold the index scan's settings while it runs and
restore the caller's values when it returns, `hnsw.ef_search` included (set inside).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The memories a search may return, as MemoryRepository.search_by_embedding documents them.
# The status is a literal so that any plan, generic ones included, can use the partial
# index idx_memory_team_type (WHERE status = 'active').
RETRIEVABLE = """
    m.team_id = team
    AND m.status = 'active'
    AND m.embedding IS NOT NULL
    AND (m.expires_at IS NULL OR m.expires_at > now())
    AND (types IS NULL OR m.memory_type = ANY (types))
    AND CASE
        WHEN agent IS NULL THEN m.memory_type <> 'agent_private'
        ELSE (m.agent_id = agent OR m.agent_id IS NULL)
             AND (m.memory_type <> 'agent_private' OR m.agent_id = agent)
    END
    AND (person IS NULL OR m.user_id = person OR m.user_id IS NULL)"""

SIGNATURE = (
    "search_memories(vector, uuid, uuid, uuid, memory_type_enum[], integer,"
    " double precision, integer)"
)

# ROWS: about a page of hits, so that callers join them to `memory` by its primary key.
# enable_sort = off: else the planner may sort a selective filter's rows instead of
# reading the HNSW index. The exact query needs its sort whatever the setting.
# The index query's filter also lets through the rows beyond `min_similarity`: in
# strict order they come after every row within it, so the scan stops at the first of them
# instead of walking hnsw.max_scan_tuples when no row of the team is that similar.
SEARCH_MEMORIES = f"""
CREATE FUNCTION search_memories(
    query vector,
    team uuid,
    agent uuid,
    person uuid,
    types memory_type_enum[],
    lim integer,
    min_similarity double precision,
    exact_max_rows integer
) RETURNS TABLE (id uuid, similarity double precision)
LANGUAGE plpgsql STABLE SECURITY INVOKER ROWS 20
SET hnsw.ef_search = 100
SET hnsw.iterative_scan = strict_order
SET enable_sort = off
AS $$
DECLARE
    dimensions integer := (
        SELECT atttypmod FROM pg_attribute
        WHERE attrelid = 'memory'::regclass AND attname = 'embedding'
    );
    max_distance double precision := 1 - min_similarity;
    candidates integer;
BEGIN
    IF query IS NULL THEN
        RETURN;
    END IF;
    IF vector_dims(query) <> dimensions THEN
        RAISE EXCEPTION 'embedding has % dimensions; expected %', vector_dims(query), dimensions
            USING ERRCODE = 'data_exception';
    END IF;

    -- In the order of idx_memory_team_type: with sorting off, every plan reads that index
    -- and stops at the bound (a bitmap scan would read all of a large team's entries first,
    -- a sequential scan all the rows before the team's).
    SELECT count(*) INTO candidates
    FROM (
        SELECT FROM memory AS m WHERE {RETRIEVABLE}
        ORDER BY m.memory_type
        LIMIT exact_max_rows + 1
    ) AS c;

    IF candidates <= exact_max_rows THEN
        -- Ordering by similarity, not distance, keeps the planner off the HNSW index.
        RETURN QUERY
        SELECT m.id, 1 - (m.embedding <=> query)
        FROM memory AS m
        WHERE {RETRIEVABLE}
          AND (max_distance IS NULL OR (m.embedding <=> query) <= max_distance)
        ORDER BY 2 DESC, 1
        LIMIT lim;
        RETURN;
    END IF;

    PERFORM set_config('hnsw.ef_search', least(greatest(100, lim), 1000)::text, true);
    RETURN QUERY
    SELECT s.id, 1 - s.distance
    FROM (
        SELECT m.id, m.embedding <=> query AS distance
        FROM memory AS m
        WHERE ({RETRIEVABLE})
           OR (max_distance IS NOT NULL AND (m.embedding <=> query) > max_distance)
        ORDER BY m.embedding <=> query
        LIMIT lim
    ) AS s
    WHERE max_distance IS NULL OR s.distance <= max_distance
    ORDER BY s.distance, s.id;
END
$$"""

COMMENT = (
    "The retrievable memories of team most similar to query (cosine), best first then by id,"
    " at most lim: an exact scan when the team has at most exact_max_rows candidates, else the"
    " HNSW index with an iterative scan. NULL agent, person, types or min_similarity: no such"
    " filter."
    " A NULL query finds nothing; one of another dimension than memory.embedding is an error."
)


def upgrade() -> None:
    op.execute(SEARCH_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {SIGNATURE} IS '{COMMENT}'")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
