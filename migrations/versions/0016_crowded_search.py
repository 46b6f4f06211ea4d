"""Team search at indexed speed for every query, the crowded ones too: a second, IVF index.

A query far from all of a team's memories (they are all about equally far from it: another
team's topic, small talk, a new subject) defeated the team's HNSW index: a graph walk there is
close to a random walk (recall@10 0.37 at `ef_search` 100 and 0.93 at 1,000 on 25,000
clustered memories of 1,536 dimensions; 0.89 at 1,000, in 81 ms, on 250,000), so such a
search fell back to an exact scan, which reads every candidate's 6 KB embedding from TOAST:
150 ms at 25,000 memories, 1.5 s at 250,000.

Each large team now has two indexes of its embeddings as half-precision vectors (`halfvec`,
2 bytes a dimension), built together and holding the same load batches:

- its HNSW index (`memory_team_<key>_<covers>`, m = 16, ef_construction = 64) answers the
  searches it can be trusted with, as before;
- its IVF index (`memory_team_<key>_<covers>_<lists>`: `ivfflat`, one list a
  `ROWS_PER_LIST` memories when it is built, but no more than its build's k-means fits in
  its memory: 1,805 lists at 1,536 dimensions and 1 GB, the lists of 225,000 memories; each
  list stored whole in the index's pages)
  answers the others: `ceil(3 * sqrt(lists))` lists read (at least `WIDE_MIN_PROBES`), more
  while the filters leave too few hits (`ivfflat.iterative_scan`), up to every list. On the
  benchmark's memories, measured alone, it found crowded queries' top 10 with recall 0.955
  reading 32 of 200 lists (25,000 memories, 3.8 ms); in `python -m bench` the searches'
  recall was 0.999 for teams of 25,000 (64 of 200 lists) and 0.978 for one of 250,000 (128
  of 1,805 lists), see BENCHMARKS.md. It builds in seconds (2.9 s for 25,000).

Both passes re-rank their candidates (the hits asked for and a quarter more, at least
`RERANKED_EXTRA` more) by their exact single-precision distance, so the similarities
returned are exact. Together the
two indexes take about the room the single-precision HNSW index took (about 4 KB a memory
each). The path `wide` names the IVF's answers; `fallback` (an exact scan) remains for a
team whose IVF index is not built yet.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

search = importlib.import_module("skill_store._migrations.versions.0002_search")
team_search = importlib.import_module("skill_store._migrations.versions.0006_team_search")
indexes = importlib.import_module("skill_store._migrations.versions.0015_team_indexes")

ROWS_PER_LIST = 125
INDEX_MIN_CONTRAST = team_search.INDEX_MIN_CONTRAST
CONTRAST_SAMPLE_ROWS = 32
RERANKED_EXTRA = 10
"""Fewest candidates beyond the hits asked for that a pass re-ranks: a halfvec distance is
exact to about 1e-3, so only near ties change places."""
WIDE_MIN_PROBES = 64
"""Fewest lists a crowded query reads (all of them in a team of up to 8,000 memories)."""
INDEX_BUILD_MEMORY = indexes.INDEX_BUILD_MEMORY

# How many lists an IVF index of `row_count` vectors of `dimensions` gets: one a
# ROWS_PER_LIST of them, but no more than its build's k-means fits in nine tenths of
# maintenance_work_mem (else pgvector refuses to build it). The sizes are pgvector's own
# (ivfbuild.c, ivfkmeans.c): room for 50 samples a list (at least 10,000), each a halfvec, of
# which as many as there are vectors are taken; a float per sample and list; the centers and
# new centers, and their sums in floats; a float per pair of centers.
IVF_LISTS = f"""
CREATE FUNCTION memory_ivf_lists(row_count bigint, dimensions integer) RETURNS integer
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(max(l), 1)::integer
    FROM generate_series(1, greatest(1, ceil(row_count::float8 / {ROWS_PER_LIST}))::integer) AS l
    CROSS JOIN LATERAL (
        SELECT greatest(50 * l, 10000)::float8 AS room,
               least(greatest(50 * l, 10000), row_count)::float8 AS samples,
               ((8 + 2 * dimensions + 7) / 8 * 8)::float8 AS item
    ) AS s
    WHERE s.room * s.item + 2 * l * s.item + 4.0 * l * dimensions
          + 4 * s.samples * l + 8 * s.samples + 4.0 * l * l + 12 * l
          <= 0.9 * pg_size_bytes(current_setting('maintenance_work_mem'))
$$"""

# How many lists a new IVF index of the team gets.
TEAM_LISTS = """
CREATE FUNCTION memory_team_lists(team uuid) RETURNS integer
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT memory_ivf_lists(count(*), (
        SELECT a.atttypmod FROM pg_attribute AS a
        WHERE a.attrelid = 'memory'::regclass AND a.attname = 'embedding'))
    FROM memory AS m
    WHERE m.team_id = team AND m.status = 'active' AND m.embedding IS NOT NULL
$$"""

# The team's two indexes of its active memories with an embedding, up to load batch
# `covers`: its HNSW index, then its IVF index in `lists` lists.
TEAM_INDEX_DEFINITIONS = """
CREATE FUNCTION memory_team_index_definitions(
    team uuid,
    covers bigint,
    lists integer,
    concurrent boolean
) RETURNS text[]
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT ARRAY[
        format('CREATE INDEX %s %I ON memory USING hnsw (%s) WITH (m = 16, ef_construction = 64)'
               ' WHERE %s',
               d.concurrently, d.name, d.halfvecs, d.predicate),
        format('CREATE INDEX %s %I ON memory USING ivfflat (%s) WITH (lists = %s) WHERE %s',
               d.concurrently, d.name || '_' || lists, d.unit_halfvecs, lists, d.predicate)]
    FROM (SELECT
        CASE WHEN concurrent THEN 'CONCURRENTLY' ELSE '' END AS concurrently,
        format('memory_team_%s_%s', lpad(to_hex(memory_team_key(team)), 16, '0'), covers)
            AS name,
        format('(embedding::halfvec(%s)) halfvec_cosine_ops', a.atttypmod) AS halfvecs,
        -- Another expression than the HNSW index's, so that a search can choose: unit
        -- vectors, whose Euclidean order is their cosine order.
        format('(l2_normalize(embedding)::halfvec(%s)) halfvec_l2_ops', a.atttypmod)
            AS unit_halfvecs,
        format('memory_team_key(team_id) = %s AND status = ''active'''
               ' AND coalesce(load_batch, 0) <= %s', memory_team_key(team), covers)
            AS predicate
        FROM pg_attribute AS a
        WHERE a.attrelid = 'memory'::regclass AND a.attname = 'embedding'
    ) AS d
$$"""

# The team's newest valid HNSW index: its name, the last load batch it holds, its rows (as
# VACUUM and ANALYZE last counted them); and the lists of its valid IVF index of the same
# load batches (NULL: none).
TEAM_INDEX = r"""
CREATE OR REPLACE FUNCTION memory_team_index(
    team uuid,
    OUT index_name text,
    OUT covers bigint,
    OUT row_count real,
    OUT lists integer
)
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    WITH valid AS (
        SELECT c.relname::text AS name, c.reltuples,
               split_part(c.relname::text, '_', 4)::bigint AS covers,
               nullif(split_part(c.relname::text, '_', 5), '')::integer AS lists
        FROM pg_class AS c
        JOIN pg_index AS i ON i.indexrelid = c.oid
        WHERE c.relname LIKE 'memory\_team\_' || lpad(to_hex(memory_team_key(team)), 16, '0')
                             || '\_%'
          AND i.indrelid = 'memory'::regclass AND i.indisvalid AND i.indisready
    )
    SELECT h.name, h.covers, h.reltuples,
           (SELECT max(w.lists) FROM valid AS w WHERE w.covers = h.covers)
    FROM valid AS h
    WHERE h.lists IS NULL
    ORDER BY h.covers DESC
    LIMIT 1
$$"""

# `search.RETRIEVABLE` with the function's arguments as the dynamic statements' parameters:
# $2 the team, $5 the agent, $6 the user, $7 the types.
RETRIEVABLE_BY_PARAMETERS = """
    m.team_id = $2
    AND m.status = 'active'
    AND m.embedding IS NOT NULL
    AND (m.expires_at IS NULL OR m.expires_at > now())
    AND ($7 IS NULL OR m.memory_type = ANY ($7))
    AND CASE
        WHEN $5 IS NULL THEN m.memory_type <> 'agent_private'
        ELSE (m.agent_id = $5 OR m.agent_id IS NULL)
             AND (m.memory_type <> 'agent_private' OR m.agent_id = $5)
    END
    AND ($6 IS NULL OR m.user_id = $6 OR m.user_id IS NULL)"""

RETRIEVABLE = search.RETRIEVABLE

# One pass over the team's indexes: the `depth` ($4) rows nearest the query ($1) in the
# order %2$s, which one index follows (HNSW_ORDER or IVF_ORDER), with the rows of the load
# batches they do not hold (beyond $3) read exactly; all re-ranked by their exact distance.
# Rows beyond `min_similarity` ($8) pass the filter so that an ordered scan stops at the
# first of them. Dynamic, since the indexes' expressions name the column's dimension (%1$s).
INDEX_PASS = f"""
SELECT coalesce(array_agg(r.id ORDER BY r.distance, r.id), '{{}}'),
       coalesce(array_agg(r.distance ORDER BY r.distance, r.id), '{{}}')
FROM (
    SELECT c.id, m.embedding <=> $1 AS distance
    FROM (
        (SELECT m.id FROM memory AS m
         WHERE memory_team_key(m.team_id) = memory_team_key($2) AND m.status = 'active'
           AND coalesce(m.load_batch, 0) <= $3 AND m.team_id = $2
           AND (({RETRIEVABLE_BY_PARAMETERS})
                OR ($8 IS NOT NULL
                    AND (m.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)) > 1 - $8))
         ORDER BY %2$s
         LIMIT $4)
        UNION ALL
        (SELECT m.id FROM memory AS m
         WHERE m.load_batch > $3 AND {RETRIEVABLE_BY_PARAMETERS}
         ORDER BY m.embedding <=> $1
         LIMIT $4)
    ) AS c
    JOIN memory AS m ON m.team_id = $2 AND m.id = c.id
    WHERE {RETRIEVABLE_BY_PARAMETERS}
    ORDER BY 2, 1
    LIMIT $4
) AS r"""

HNSW_ORDER = "m.embedding::halfvec(%1$s) <=> $1::halfvec(%1$s)"
IVF_ORDER = "l2_normalize(m.embedding)::halfvec(%1$s) <-> l2_normalize($1)::halfvec(%1$s)"

# ROWS: about a page of hits, so that callers join them to `memory` by its primary key.
# enable_sort = off: else the planner may sort a selective filter's rows instead of reading
# an index; the exact scan needs its sort whatever the setting. plan_cache_mode: each
# statement is planned with the call's values, so the planner sees which team's partial
# indexes match.
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
SET ivfflat.iterative_scan = relaxed_order
SET enable_sort = off
SET plan_cache_mode = force_custom_plan
AS $$
DECLARE
    dimensions integer := (
        SELECT atttypmod FROM pg_attribute
        WHERE attrelid = 'memory'::regclass AND attname = 'embedding'
    );
    max_distance double precision := 1 - min_similarity;
    depth integer := lim + greatest({RERANKED_EXTRA}, lim / 4);  -- candidates re-ranked
    candidates integer;
    covers bigint;  -- the last load batch the team's indexes hold
    lists integer;  -- the lists of its IVF index; NULL: not built yet
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
        SELECT x.covers, x.lists INTO covers, lists FROM memory_team_index(team) AS x;
        chosen := CASE WHEN covers IS NOT NULL THEN 'index' ELSE 'unindexed' END;
    END IF;

    IF chosen = 'index' THEN
        PERFORM set_config('hnsw.ef_search', least(greatest(100, depth), 1000)::text, true);
        EXECUTE format(
            $pass${INDEX_PASS}$pass$,
            dimensions, format('{HNSW_ORDER}', dimensions))
        INTO ids, distances
        USING query, team, covers, depth, agent, person, types, min_similarity;
        -- Hits within `min_similarity`; the scan stops at the first row beyond it.
        within := cardinality(ids);
        WHILE within > 0 AND distances[within] > coalesce(max_distance, 'infinity') LOOP
            within := within - 1;
        END LOOP;
        IF within = 0 AND cardinality(ids) > 0 THEN
            trusted := true;
        ELSIF cardinality(ids) = depth OR within < cardinality(ids) THEN
            -- Not trusted if the query is crowded: its tenth hit hardly nearer than a
            -- typical memory (the mean distance of a sample by a hash of the ids).
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
        IF NOT trusted AND lists IS NOT NULL THEN
            -- The IVF index; more lists (up to every one) while the filters leave too few.
            chosen := 'wide';
            PERFORM set_config(
                'ivfflat.probes',
                least(lists, greatest({WIDE_MIN_PROBES}, ceil(3 * sqrt(lists))))::text,
                true);
        END IF;
        IF trusted OR chosen = 'wide' THEN
            IF chosen = 'wide' THEN
                EXECUTE format(
                    $pass${INDEX_PASS}$pass$,
                    dimensions, format('{IVF_ORDER}', dimensions))
                INTO ids, distances
                USING query, team, covers, depth, agent, person, types, min_similarity;
                within := cardinality(ids);
                WHILE within > 0 AND distances[within] > coalesce(max_distance, 'infinity')
                LOOP
                    within := within - 1;
                END LOOP;
            END IF;
            RETURN QUERY
            SELECT h.id, 1 - h.distance, chosen
            FROM unnest(ids[1:least(within, lim)], distances[1:least(within, lim)])
                 AS h (id, distance)
            ORDER BY h.distance, h.id;
            RETURN;
        END IF;
        chosen := 'fallback';
    END IF;

    -- Ordering by similarity, not distance, keeps the planner off the teams' indexes.
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
    " index (the team''s own HNSW index, and the rows of load batches it does not hold yet),"
    " wide (the query is crowded, its hits hardly nearer than a typical memory of the team,"
    " or that scan fell short: the team''s own IVF index), fallback (the same, the IVF index"
    " not built yet: exact), unindexed (no index of the team''s yet: exact); the indexes''"
    " hits re-ranked by exact distance. NULL agent, person, types or min_similarity: no such"
    " filter. A NULL query finds nothing; one of another dimension than memory.embedding is an"
    " error."
)

# The teams' indexes: each team, its index, and the load batches it holds.
TEAM_INDEXES = (
    "SELECT t.id AS team, x.index_name, x.covers FROM team AS t, memory_team_index(t.id) AS x"
    " WHERE x.index_name IS NOT NULL"
)

# The IVF indexes, which 0015 does not know.
DROP_IVF_INDEXES = r"""
DO $$
DECLARE
    name text;
BEGIN
    FOR name IN
        SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'memory'::regclass AND c.relname LIKE 'memory\_team\_%\_%\_%'
    LOOP
        EXECUTE format('DROP INDEX %I', name);
    END LOOP;
END
$$"""

# Each team of `team_indexes` indexed anew: its old indexes dropped, `statements` run.
REBUILD_TEAM_INDEXES = r"""
DO $$
DECLARE
    old record;
    statement text;
BEGIN
    FOR old IN SELECT * FROM team_indexes ORDER BY team LOOP
        EXECUTE format('DROP INDEX %I', old.index_name);
        FOREACH statement IN ARRAY {statements} LOOP
            EXECUTE statement;
        END LOOP;
    END LOOP;
END
$$"""
NEW_STATEMENTS = (
    "memory_team_index_definitions(old.team, old.covers, memory_team_lists(old.team), false)"
)
OLD_STATEMENTS = "ARRAY[memory_team_index_definition(old.team, old.covers, false)]"


def upgrade() -> None:
    op.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
    # memory_team_index gains a column, so it is made anew: the teams' indexes are listed
    # with the old one first, then each team is indexed anew.
    op.execute(f"CREATE TEMPORARY TABLE team_indexes ON COMMIT DROP AS {TEAM_INDEXES}")
    op.execute("DROP FUNCTION memory_team_index(uuid)")
    op.execute("DROP FUNCTION memory_team_index_definition(uuid, bigint, boolean)")
    op.execute(TEAM_INDEX)
    op.execute(IVF_LISTS)
    op.execute(TEAM_LISTS)
    op.execute(TEAM_INDEX_DEFINITIONS)
    op.execute(REBUILD_TEAM_INDEXES.format(statements=NEW_STATEMENTS))
    op.execute(SEARCH_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {search.SIGNATURE} IS '{COMMENT}'")


def downgrade() -> None:
    op.execute(f"SET LOCAL maintenance_work_mem = '{INDEX_BUILD_MEMORY}'")
    op.execute(f"CREATE TEMPORARY TABLE team_indexes ON COMMIT DROP AS {TEAM_INDEXES}")
    op.execute(DROP_IVF_INDEXES)
    op.execute("DROP FUNCTION memory_team_index(uuid)")
    op.execute("DROP FUNCTION memory_team_index_definitions(uuid, bigint, integer, boolean)")
    op.execute("DROP FUNCTION memory_team_lists(uuid)")
    op.execute("DROP FUNCTION memory_ivf_lists(bigint, integer)")
    op.execute(indexes.TEAM_INDEX)
    op.execute(indexes.TEAM_INDEX_DEFINITION)
    op.execute(REBUILD_TEAM_INDEXES.format(statements=OLD_STATEMENTS))
    op.execute(indexes.SEARCH_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {search.SIGNATURE} IS '{indexes.COMMENT}'")
