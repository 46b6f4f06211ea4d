"""Team search that no other team can starve: an HNSW index per large team, else exact scans.

One HNSW index over every team's memories fails a team's filtered search whenever other
teams' memories lie nearer the query: the iterative scan spends its budget on them and
returns too few or wrong hits. So the shared index goes, and `search_memories` takes one of
these paths, named in its `path` column:

- `exact`: the team has at most `exact_max_rows` candidates; every one is compared.
- `index`: the team has an HNSW index of its own (`memory_team_index_name(team)`, built by
  `skill_store.index_large_teams`); the iterative scan walks the team's memories only.
- `fallback`: the index is not trusted for the query, and an exact scan answers. Either the
  scan ended before it found `lim` hits (the filters of agent, user or type left too few of
  the memories it walked before `hnsw.max_scan_tuples`, 20,000, or `work_mem` cut it short),
  or the query is unrelated to the team's memories: its nearest ones are hardly nearer than
  any (their relative contrast, a sample's mean distance over the tenth hit's, is below
  INDEX_MIN_CONTRAST). A graph index cannot tell such near-equidistant memories apart; on
  1536-dimensional data its recall@10 there fell to 0.5.
- `unindexed`: a team past `exact_max_rows` whose index is not built (or not valid) yet:
  an exact scan, correct and slower, until the index is built.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

search = importlib.import_module("skill_store._migrations.versions.0002_search")

TEAM_INDEX_NAME = """
CREATE FUNCTION memory_team_index_name(team uuid) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'memory_embedding_team_' || replace(team::text, '-', '')
$$"""

SIGNATURE = search.SIGNATURE

INDEX_MIN_CONTRAST = 1.15
"""Below this relative contrast an index scan's hits are replaced by an exact scan's.

Measured: 1.94 to 2.19 for queries about a team's own topics in `bench/data.py`'s world,
1.06 to 1.11 for queries about another team's topics (where the index's recall@10 was 0.48
to 0.64), and 1.17 to 1.96 (5 % quantile 1.32) for the LoCoMo questions with
all-MiniLM-L6-v2 vectors.
"""
CONTRAST_SAMPLE_ROWS = 32
"""Memories of the team whose mean distance to the query is the typical distance: the
first by id, which is a random sample since ids are random (the team's key reads them)."""

# ROWS: about a page of hits, so that callers join them to `memory` by its primary key.
# enable_sort = off: else the planner may sort a selective filter's rows instead of
# reading an HNSW index. The exact query needs its sort whatever the setting.
# plan_cache_mode: each statement is planned with the call's values, so the planner sees
# which team's partial index matches (a generic plan knows no team and could use none).
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
) RETURNS TABLE (id uuid, similarity double precision, path text)
LANGUAGE plpgsql STABLE SECURITY INVOKER ROWS 20
SET hnsw.ef_search = 100
SET hnsw.iterative_scan = strict_order
SET hnsw.max_scan_tuples = 20000
SET enable_sort = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    dimensions integer := (
        SELECT atttypmod FROM pg_attribute
        WHERE attrelid = 'memory'::regclass AND attname = 'embedding'
    );
    max_distance double precision := 1 - min_similarity;
    candidates integer;
    ids uuid[];
    distances double precision[];
    within integer;
    typical double precision;
    trusted boolean := false;
    chosen text;
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
        SELECT FROM memory AS m WHERE {search.RETRIEVABLE}
        ORDER BY m.memory_type
        LIMIT exact_max_rows + 1
    ) AS c;

    IF candidates <= exact_max_rows THEN
        chosen := 'exact';
    ELSE
        PERFORM FROM pg_index AS i
        WHERE i.indexrelid = to_regclass(memory_team_index_name(team))
          AND i.indrelid = 'memory'::regclass AND i.indisvalid AND i.indisready;
        chosen := CASE WHEN FOUND THEN 'index' ELSE 'unindexed' END;
    END IF;

    IF chosen = 'index' THEN
        PERFORM set_config('hnsw.ef_search', least(greatest(100, lim), 1000)::text, true);
        -- Rows beyond `min_similarity` come after every row within it: the scan stops at
        -- the first of them instead of walking the whole index when no row is that similar.
        SELECT coalesce(array_agg(s.id ORDER BY s.distance, s.id), '{{}}'),
               coalesce(array_agg(s.distance ORDER BY s.distance, s.id), '{{}}')
        INTO ids, distances
        FROM (
            SELECT m.id, m.embedding <=> query AS distance
            FROM memory AS m
            WHERE m.team_id = team AND m.status = 'active'
              AND (({search.RETRIEVABLE})
                   OR (max_distance IS NOT NULL AND (m.embedding <=> query) > max_distance))
            ORDER BY m.embedding <=> query
            LIMIT lim
        ) AS s;
        -- Hits within `min_similarity`; the scan stops at the first row beyond it.
        within := cardinality(ids);
        WHILE within > 0 AND distances[within] > coalesce(max_distance, 'infinity') LOOP
            within := within - 1;
        END LOOP;
        IF within = 0 AND cardinality(ids) > 0 THEN
            trusted := true;
        ELSIF cardinality(ids) = lim OR within < cardinality(ids) THEN
            SELECT avg(s.distance) INTO typical
            FROM (
                SELECT m.embedding <=> query AS distance
                FROM memory AS m
                WHERE m.team_id = team AND m.status = 'active' AND m.embedding IS NOT NULL
                ORDER BY m.id
                LIMIT {CONTRAST_SAMPLE_ROWS}
            ) AS s;
            trusted := typical >= {INDEX_MIN_CONTRAST} * distances[least(within, 10)];
        END IF;
        -- Else the scan was cut short (by hnsw.max_scan_tuples or work_mem).
        IF trusted THEN
            RETURN QUERY
            SELECT h.id, 1 - h.distance, chosen
            FROM unnest(ids, distances) AS h (id, distance)
            WHERE max_distance IS NULL OR h.distance <= max_distance
            ORDER BY h.distance, h.id;
            RETURN;
        END IF;
        chosen := 'fallback';
    END IF;

    -- Ordering by similarity, not distance, keeps the planner off the HNSW indexes.
    RETURN QUERY
    SELECT m.id, 1 - (m.embedding <=> query), chosen
    FROM memory AS m
    WHERE {search.RETRIEVABLE}
      AND (max_distance IS NULL OR (m.embedding <=> query) <= max_distance)
    ORDER BY 2 DESC, 1
    LIMIT lim;
END
$$"""

COMMENT = (
    "The retrievable memories of team most similar to query (cosine), best first then by id,"
    " at most lim, and the path that found them: exact (at most exact_max_rows candidates),"
    " index (the team''s own HNSW index), fallback (that index fell short or the query is"
    " unrelated to the team''s memories: exact),"
    " unindexed (no index of the team''s yet: exact). NULL agent, person, types or"
    " min_similarity: no such filter. A NULL query finds nothing; one of another dimension"
    " than memory.embedding is an error."
)


def upgrade() -> None:
    op.execute("DROP INDEX idx_memory_embedding")
    op.execute(f"DROP FUNCTION {SIGNATURE}")
    op.execute(TEAM_INDEX_NAME)
    op.execute(SEARCH_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {SIGNATURE} IS '{COMMENT}'")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
    op.execute("""
        DO $$
        DECLARE
            name text;
        BEGIN
            FOR name IN
                SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                WHERE i.indrelid = 'memory'::regclass
                  AND c.relname LIKE 'memory\\_embedding\\_team\\_%'
            LOOP
                EXECUTE format('DROP INDEX %I', name);
            END LOOP;
        END $$""")
    op.execute("DROP FUNCTION memory_team_index_name(uuid)")
    op.execute(search.SEARCH_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {SIGNATURE} IS '{search.COMMENT}'")
    op.execute(
        "CREATE INDEX idx_memory_embedding ON memory"
        " USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
