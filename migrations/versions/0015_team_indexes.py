"""A team's own index: named without its team, kept by the store, spared by bulk loads.

- A team's HNSW index is named `memory_team_<key>_<covers>` and its predicate reads
  `memory_team_key(team_id) = <key>`, where `memory_team_key` is a 64-bit hash of the team's
  id: the catalog (`pg_class`, `pg_index`), which every role can read, no longer shows other
  teams' ids. `memory_team_index(team)` finds the team's newest valid index, with the last
  load batch it holds (`covers`) and its row count; `memory_team_index_definition(team,
  covers, concurrent)` is the one statement that builds one.
- `memory.load_batch`: a bulk load that is large beside its team's index marks its rows with
  a number of the sequence `memory_load_batch`. An index holds the rows of the batches up to
  its `covers` (and every unmarked row), so the load adds nothing to the team's graph row by
  row; `search_memories` finds the rows of later batches by an exact scan of them
  (`idx_memory_team_load_batch`) beside the index, until a new index that holds them replaces
  the old one.
- Every existing team index is rebuilt under its new name, in this migration.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

search = importlib.import_module("skill_store._migrations.versions.0002_search")
tenancy = importlib.import_module("skill_store._migrations.versions.0004_tenancy")
team_search = importlib.import_module("skill_store._migrations.versions.0006_team_search")
trusted = importlib.import_module("skill_store._migrations.versions.0014_trusted_retrieval")

INDEX_MIN_CONTRAST = team_search.INDEX_MIN_CONTRAST
CONTRAST_SAMPLE_ROWS = 32
INDEX_BUILD_MEMORY = "1GB"

# A hash, not the id: the key of a team's index is in catalogs every role reads. Two teams
# of one key (one chance in 2^64 a pair) would share nothing but the index's name.
TEAM_KEY = """
CREATE FUNCTION memory_team_key(team uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT uuid_hash_extended(team, 0)
$$"""

TEAM_INDEX_DEFINITION = """
CREATE FUNCTION memory_team_index_definition(team uuid, covers bigint, concurrent boolean)
RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT format(
        'CREATE INDEX %s %I ON memory USING hnsw (embedding vector_cosine_ops)'
        ' WITH (m = 16, ef_construction = 64) WHERE memory_team_key(team_id) = %s'
        ' AND status = ''active'' AND coalesce(load_batch, 0) <= %s',
        CASE WHEN concurrent THEN 'CONCURRENTLY' ELSE '' END,
        format('memory_team_%s_%s', lpad(to_hex(memory_team_key(team)), 16, '0'), covers),
        memory_team_key(team),
        covers)
$$"""

# The newest valid index of the team: its name, the last load batch it holds, its rows.
TEAM_INDEX = r"""
CREATE FUNCTION memory_team_index(
    team uuid,
    OUT index_name text,
    OUT covers bigint,
    OUT row_count real
)
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT c.relname::text, split_part(c.relname::text, '_', 4)::bigint, c.reltuples
    FROM pg_class AS c
    JOIN pg_index AS i ON i.indexrelid = c.oid
    WHERE c.relname LIKE 'memory\_team\_' || lpad(to_hex(memory_team_key(team)), 16, '0') || '\_%'
      AND i.indrelid = 'memory'::regclass AND i.indisvalid AND i.indisready
    ORDER BY 2 DESC
    LIMIT 1
$$"""

LOAD_BATCH = "ALTER TABLE memory ADD COLUMN load_batch bigint"
UNLOGGED_COLUMNS = ("load_batch",)
"""Which bulk load wrote a row is no change of the memory: the audit does not log it."""
LOAD_BATCH_INDEX = (
    "CREATE INDEX idx_memory_team_load_batch ON memory (team_id, load_batch)"
    " WHERE load_batch IS NOT NULL"
)

RETRIEVABLE = search.RETRIEVABLE

# ROWS: about a page of hits, so that callers join them to `memory` by its primary key.
# enable_sort = off: else the planner may sort a selective filter's rows instead of
# reading an HNSW index. The exact query needs its sort whatever the setting.
# plan_cache_mode: each statement is planned with the call's values, so the planner sees
# which team's partial index matches (a generic plan knows no team and could use none).
SEARCH_MEMORIES = f"""
CREATE OR REPLACE FUNCTION search_memories(
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
    covers bigint;  -- the last load batch the team's index holds
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
        SELECT FROM memory AS m WHERE {RETRIEVABLE}
        ORDER BY m.memory_type
        LIMIT exact_max_rows + 1
    ) AS c;

    IF candidates <= exact_max_rows THEN
        chosen := 'exact';
    ELSE
        SELECT x.covers INTO covers FROM memory_team_index(team) AS x;
        chosen := CASE WHEN covers IS NOT NULL THEN 'index' ELSE 'unindexed' END;
    END IF;

    IF chosen = 'index' THEN
        PERFORM set_config('hnsw.ef_search', least(greatest(100, lim), 1000)::text, true);
        -- The index's rows, and the rows of the load batches it does not hold yet, read
        -- exactly (idx_memory_team_load_batch). Rows beyond `min_similarity` come after
        -- every row within it: the index scan stops at the first of them instead of walking
        -- the whole index when no row is that similar.
        SELECT coalesce(array_agg(s.id ORDER BY s.distance, s.id), '{{}}'),
               coalesce(array_agg(s.distance ORDER BY s.distance, s.id), '{{}}')
        INTO ids, distances
        FROM (
            (SELECT m.id, m.embedding <=> query AS distance
             FROM memory AS m
             WHERE memory_team_key(m.team_id) = memory_team_key(team)
               AND m.status = 'active' AND coalesce(m.load_batch, 0) <= covers
               AND m.team_id = team
               AND (({RETRIEVABLE})
                    OR (max_distance IS NOT NULL AND (m.embedding <=> query) > max_distance))
             ORDER BY m.embedding <=> query
             LIMIT lim)
            UNION ALL
            (SELECT m.id, m.embedding <=> query AS distance
             FROM memory AS m
             WHERE m.team_id = team AND m.load_batch > covers AND {RETRIEVABLE}
             ORDER BY 2
             LIMIT lim)
            ORDER BY 2, 1
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
            -- The typical distance: the mean over a sample by a hash of the ids.
            SELECT avg(s.distance) INTO typical
            FROM (
                SELECT m.embedding <=> query AS distance
                FROM memory AS m
                WHERE m.team_id = team AND m.status = 'active' AND m.embedding IS NOT NULL
                ORDER BY uuid_hash_extended(m.id, 0)
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
    WHERE {RETRIEVABLE}
      AND (max_distance IS NULL OR (m.embedding <=> query) <= max_distance)
    ORDER BY 2 DESC, 1
    LIMIT lim;
END
$$"""

COMMENT = (
    "The retrievable memories of team most similar to query (cosine), best first then by id,"
    " at most lim, and the path that found them: exact (at most exact_max_rows candidates),"
    " index (the team''s own HNSW index, memory_team_index(team), and an exact scan of the"
    " rows of load batches it does not hold yet), fallback (that index fell short or the"
    " query is unrelated to the team''s memories: exact), unindexed (no index of the"
    " team''s yet: exact). NULL agent, person, types or min_similarity: no such filter. A"
    " NULL query finds nothing; one of another dimension than memory.embedding is an error."
)

OLD_TEAM_INDEX_SIZE = (
    "SELECT c.reltuples INTO indexed\n"
    "        FROM pg_class AS c WHERE c.oid = to_regclass(memory_team_index_name(team));"
)
NEW_TEAM_INDEX_SIZE = "SELECT x.row_count INTO indexed FROM memory_team_index(team) AS x;"
assert trusted.RETRIEVE_MEMORIES.count(OLD_TEAM_INDEX_SIZE) == 1
RETRIEVE_MEMORIES = trusted.RETRIEVE_MEMORIES.replace(OLD_TEAM_INDEX_SIZE, NEW_TEAM_INDEX_SIZE)

# 0006's indexes (named and filtered by the team's id) become the same teams' new ones.
REBUILD_TEAM_INDEXES = r"""
DO $$
DECLARE
    team uuid;
BEGIN
    FOR team IN
        SELECT t.id FROM team AS t
        JOIN pg_class AS c ON c.relname = memory_team_index_name(t.id)
        JOIN pg_index AS i ON i.indexrelid = c.oid
        WHERE i.indrelid = 'memory'::regclass AND i.indisvalid
        ORDER BY t.id
    LOOP
        EXECUTE memory_team_index_definition(team, 0, false);
    END LOOP;
END
$$"""

DROP_TEAM_INDEXES = r"""
DO $$
DECLARE
    name text;
BEGIN
    FOR name IN
        SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'memory'::regclass AND c.relname LIKE '{pattern}'
    LOOP
        EXECUTE format('DROP INDEX %I', name);
    END LOOP;
END
$$"""

# Back to 0006's names: each team with an index of the new kind gets one of the old.
RESTORE_TEAM_INDEXES = r"""
DO $$
DECLARE
    team uuid;
BEGIN
    FOR team IN
        SELECT t.id FROM team AS t WHERE (memory_team_index(t.id)).index_name IS NOT NULL
        ORDER BY t.id
    LOOP
        EXECUTE format(
            'CREATE INDEX %I ON memory USING hnsw (embedding vector_cosine_ops)'
            ' WITH (m = 16, ef_construction = 64) WHERE team_id = %L AND status = ''active''',
            memory_team_index_name(team), team);
    END LOOP;
END
$$"""


def upgrade() -> None:
    op.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
    op.execute(LOAD_BATCH)
    op.execute(LOAD_BATCH_INDEX)
    op.execute("CREATE SEQUENCE memory_load_batch")
    op.execute(f"GRANT USAGE ON SEQUENCE memory_load_batch TO {tenancy.ROLE}")
    op.execute(TEAM_KEY)
    op.execute(TEAM_INDEX_DEFINITION)
    op.execute(TEAM_INDEX)
    op.execute(REBUILD_TEAM_INDEXES)
    op.execute(DROP_TEAM_INDEXES.format(pattern=r"memory\_embedding\_team\_%"))
    op.execute(SEARCH_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {search.SIGNATURE} IS '{COMMENT}'")
    op.execute(RETRIEVE_MEMORIES)
    op.execute("DROP FUNCTION memory_team_index_name(uuid)")


def downgrade() -> None:
    op.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
    op.execute(team_search.TEAM_INDEX_NAME)
    op.execute(trusted.RETRIEVE_MEMORIES)
    op.execute(trusted.SEARCH_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {search.SIGNATURE} IS '{team_search.COMMENT}'")
    op.execute(RESTORE_TEAM_INDEXES)
    op.execute(DROP_TEAM_INDEXES.format(pattern=r"memory\_team\_%"))
    op.execute("DROP FUNCTION memory_team_index(uuid)")
    op.execute("DROP FUNCTION memory_team_index_definition(uuid, bigint, boolean)")
    op.execute("DROP FUNCTION memory_team_key(uuid)")
    op.execute("DROP SEQUENCE memory_load_batch")
    op.execute("DROP INDEX idx_memory_team_load_batch")
    op.execute("ALTER TABLE memory DROP COLUMN load_batch")
