"""Changing the embedder of a live store: new vectors beside the old, then one short switch.

`skill_store.migrate_embeddings` (`skill-store embeddings migrate`) drives these functions:

- `begin_memory_embedder_migration(dimensions, model, team)` adds the shadow columns
  `memory.embedding_next` (`vector(dimensions)`) and `memory.embedding_model_next`, which the
  new vectors fill batch by batch (a memory with `embedding_model_next` set is done), and the
  trigger `trg_memory_embedding_next`, which clears them when a memory's content or vector
  changes, so that a change made meanwhile is embedded again. `memory_embedder_migration()`
  reads the migration in progress: its model, dimensions and team (NULL: every team).
- `memory_team_index_definitions(team, covers, lists, concurrent, shadow)`: with `shadow`, the
  same team indexes on `embedding_next`, named `memory_next_<key>_<covers>[_<lists>]`, built
  before the switch; `memory_team_lists(team, shadow)`, the lists of the IVF one.
- `switch_memory_embedder(actor)`, in one transaction: an audit row per memory whose
  vector changes, then the shadow columns and their indexes take the place of the old ones
  (the old columns are dropped, with their indexes); triggers that name the columns (the
  audit's) are made again on the new ones.
- `switch_memory_embedder_of_team(team, actor)`: one team's memories take their new
  vectors by an UPDATE (the audit trigger logs it), under a new load batch when the team has
  an index, so that they are read exactly beside it until it is rebuilt; then the migration ends.
- `end_memory_embedder_migration()` drops the shadow columns, their indexes and the trigger.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

crowded = importlib.import_module("skill_store._migrations.versions.0016_crowded_search")

# 0016's, and with `shadow` the lists of an IVF index on the new column of an embedder
# migration, whose dimension may differ.
TEAM_LISTS = """
CREATE FUNCTION memory_team_lists(team uuid, shadow boolean DEFAULT false) RETURNS integer
LANGUAGE sql STABLE STRICT PARALLEL SAFE AS $$
    SELECT memory_ivf_lists(count(*), (
        SELECT a.atttypmod FROM pg_attribute AS a
        WHERE a.attrelid = 'memory'::regclass
          AND a.attname = CASE WHEN shadow THEN 'embedding_next' ELSE 'embedding' END))
    FROM memory AS m
    WHERE m.team_id = team AND m.status = 'active' AND m.embedding IS NOT NULL
$$"""

# 0016's, and with `shadow` the same on the new column of an embedder migration.
TEAM_INDEX_DEFINITIONS = """
CREATE FUNCTION memory_team_index_definitions(
    team uuid,
    covers bigint,
    lists integer,
    concurrent boolean,
    shadow boolean DEFAULT false
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
        format('memory_%s_%s_%s',
               CASE WHEN shadow THEN 'next' ELSE 'team' END,
               lpad(to_hex(memory_team_key(team)), 16, '0'),
               covers)
            AS name,
        format('(%I::halfvec(%s)) halfvec_cosine_ops', a.attname, a.atttypmod) AS halfvecs,
        -- Another expression than the HNSW index's, so that a search can choose: unit
        -- vectors, whose Euclidean order is their cosine order.
        format('(l2_normalize(%I)::halfvec(%s)) halfvec_l2_ops', a.attname, a.atttypmod)
            AS unit_halfvecs,
        format('memory_team_key(team_id) = %s AND status = ''active'''
               ' AND coalesce(load_batch, 0) <= %s', memory_team_key(team), covers)
            AS predicate
        FROM pg_attribute AS a
        WHERE a.attrelid = 'memory'::regclass
          AND a.attname = CASE WHEN shadow THEN 'embedding_next' ELSE 'embedding' END
    ) AS d
$$"""

EMBEDDER_CHANGE = """
CREATE FUNCTION memory_embedder_change(
    old_model text,
    old_dimensions integer,
    new_model text,
    new_dimensions integer
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT format('embedder %s (%s dimensions) → %s (%s dimensions)',
                  coalesce(old_model, 'unknown'), old_dimensions, new_model, new_dimensions)
$$"""

MIGRATION_IN_PROGRESS = """
CREATE FUNCTION memory_embedder_migration(
    OUT model text,
    OUT dimensions integer,
    OUT team uuid
)
LANGUAGE sql STABLE AS $$
    SELECT t.target ->> 'model', a.atttypmod, (t.target ->> 'team')::uuid
    FROM pg_attribute AS a
    CROSS JOIN LATERAL (SELECT col_description(a.attrelid, a.attnum)::jsonb AS target) AS t
    WHERE a.attrelid = 'memory'::regclass AND a.attname = 'embedding_next'
$$"""

CLEAR_NEXT = """
CREATE FUNCTION trigger_clear_memory_embedding_next() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.embedding_next := NULL;
    NEW.embedding_model_next := NULL;
    RETURN NEW;
END
$$"""

BEGIN = """
CREATE FUNCTION begin_memory_embedder_migration(dimensions integer, model text, team uuid)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE memory ADD COLUMN embedding_next vector(%s),'
                   ' ADD COLUMN embedding_model_next text', dimensions);
    EXECUTE format('COMMENT ON COLUMN memory.embedding_next IS %L',
                   json_build_object('model', model, 'team', team));
    CREATE TRIGGER trg_memory_embedding_next
        BEFORE UPDATE OF content, embedding ON memory
        FOR EACH ROW
        WHEN (OLD.content IS DISTINCT FROM NEW.content
              OR OLD.embedding IS DISTINCT FROM NEW.embedding)
        EXECUTE FUNCTION trigger_clear_memory_embedding_next();
END
$$"""

# The audit row of each memory whose vector changes is the one its trigger writes for an
# update of `embedding` and `embedding_model`: the columns are renamed, which fires nothing.
SWITCH = r"""
CREATE FUNCTION switch_memory_embedder(actor text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    old_dimensions integer;
    new_dimensions integer;
    old_columns smallint[];
    logged bigint;
    dependent record;
    definitions text[] := '{}';
    definition text;
    name text;
BEGIN
    SELECT max(a.atttypmod) FILTER (WHERE a.attname = 'embedding'),
           max(a.atttypmod) FILTER (WHERE a.attname = 'embedding_next'),
           array_agg(a.attnum) FILTER (WHERE a.attname IN ('embedding', 'embedding_model'))
    INTO old_dimensions, new_dimensions, old_columns
    FROM pg_attribute AS a
    WHERE a.attrelid = 'memory'::regclass AND NOT a.attisdropped;
    IF new_dimensions IS NULL THEN
        RAISE EXCEPTION 'no embedder migration is in progress';
    END IF;
    IF EXISTS (SELECT FROM memory AS m
               WHERE m.embedding IS NOT NULL AND m.embedding_model_next IS NULL) THEN
        RAISE EXCEPTION 'memories with a vector have no new one yet';
    END IF;

    INSERT INTO memory_log (memory_id, team_id, action, old_content, new_content,
                            old_importance, new_importance, old_tier, new_tier, old_status,
                            new_status, changed_by, reason, conversation_id, created_at)
    SELECT m.id, m.team_id, 'updated', m.content, m.content, m.importance, m.importance,
           m.tier::text, m.tier::text, m.status::text, m.status::text, actor,
           memory_embedder_change(m.embedding_model, old_dimensions, m.embedding_model_next,
                                  new_dimensions),
           m.source_conversation_id,
           greatest(clock_timestamp(),
                    (SELECT max(l.created_at) + interval '1 microsecond' FROM memory_log AS l
                     WHERE l.team_id = m.team_id AND l.memory_id = m.id))
    FROM memory AS m
    WHERE m.embedding_model_next IS NOT NULL
      AND (m.embedding_model IS DISTINCT FROM m.embedding_model_next
           OR old_dimensions <> new_dimensions);
    GET DIAGNOSTICS logged = ROW_COUNT;

    FOR dependent IN
        SELECT t.tgname, pg_get_triggerdef(t.oid) AS definition
        FROM pg_trigger AS t
        WHERE t.tgrelid = 'memory'::regclass AND NOT t.tgisinternal
          AND t.tgname <> 'trg_memory_embedding_next'
          AND EXISTS (SELECT FROM pg_depend AS d
                      WHERE d.classid = 'pg_trigger'::regclass AND d.objid = t.oid
                        AND d.refobjid = 'memory'::regclass
                        AND d.refobjsubid = ANY (old_columns))
    LOOP
        definitions := definitions || dependent.definition;
        EXECUTE format('DROP TRIGGER %I ON memory', dependent.tgname);
    END LOOP;
    DROP TRIGGER trg_memory_embedding_next ON memory;
    ALTER TABLE memory DROP COLUMN embedding, DROP COLUMN embedding_model;
    ALTER TABLE memory RENAME COLUMN embedding_next TO embedding;
    ALTER TABLE memory RENAME COLUMN embedding_model_next TO embedding_model;
    COMMENT ON COLUMN memory.embedding IS NULL;
    ALTER INDEX memory_next_embedder RENAME TO idx_memory_embedder;
    FOR name IN
        SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'memory'::regclass AND c.relname LIKE 'memory\_next\_%'
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I',
                       name, 'memory_team_' || substr(name, length('memory_next_') + 1));
    END LOOP;
    FOREACH definition IN ARRAY definitions LOOP
        EXECUTE definition;
    END LOOP;
    RETURN logged;
END
$$"""

SWITCH_TEAM = """
CREATE FUNCTION switch_memory_embedder_of_team(team uuid, actor text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    target record;
    batch bigint;
    old_model text;
    switched bigint := 0;
    updated bigint;
BEGIN
    SELECT * INTO target FROM memory_embedder_migration();
    IF target.team IS DISTINCT FROM team THEN
        RAISE EXCEPTION 'no embedder migration of team % is in progress', team;
    END IF;
    IF EXISTS (SELECT FROM memory AS m
               WHERE m.team_id = team AND m.embedding IS NOT NULL
                 AND m.embedding_model IS DISTINCT FROM target.model
                 AND m.embedding_model_next IS NULL) THEN
        RAISE EXCEPTION 'memories of team % with a vector have no new one yet', team;
    END IF;
    IF (SELECT x.covers FROM memory_team_index(team) AS x) IS NOT NULL THEN
        batch := nextval('memory_load_batch');
    END IF;
    FOR old_model IN
        SELECT DISTINCT m.embedding_model FROM memory AS m
        WHERE m.team_id = team AND m.embedding_model_next IS NOT NULL
    LOOP
        PERFORM set_config('skill_store.actor', actor, true),
                set_config('skill_store.reason',
                           memory_embedder_change(old_model, target.dimensions, target.model,
                                                  target.dimensions),
                           true);
        UPDATE memory AS m
        SET embedding = m.embedding_next, embedding_model = m.embedding_model_next,
            load_batch = coalesce(batch, m.load_batch)
        WHERE m.team_id = team AND m.embedding_model_next IS NOT NULL
          AND m.embedding_model IS NOT DISTINCT FROM old_model;
        GET DIAGNOSTICS updated = ROW_COUNT;
        switched := switched + updated;
    END LOOP;
    PERFORM set_config('skill_store.actor', '', true), set_config('skill_store.reason', '', true);
    PERFORM end_memory_embedder_migration();
    RETURN switched;
END
$$"""

END = """
CREATE FUNCTION end_memory_embedder_migration() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DROP TRIGGER IF EXISTS trg_memory_embedding_next ON memory;
    ALTER TABLE memory DROP COLUMN IF EXISTS embedding_next,
                       DROP COLUMN IF EXISTS embedding_model_next;
END
$$"""

FUNCTIONS = (
    "memory_embedder_change(text, integer, text, integer)",
    "memory_embedder_migration()",
    "trigger_clear_memory_embedding_next()",
    "begin_memory_embedder_migration(integer, text, uuid)",
    "switch_memory_embedder(text)",
    "switch_memory_embedder_of_team(uuid, text)",
    "end_memory_embedder_migration()",
)


def upgrade() -> None:
    op.execute("DROP FUNCTION memory_team_lists(uuid)")
    op.execute(TEAM_LISTS)
    op.execute("DROP FUNCTION memory_team_index_definitions(uuid, bigint, integer, boolean)")
    op.execute(TEAM_INDEX_DEFINITIONS)
    op.execute(EMBEDDER_CHANGE)
    op.execute(MIGRATION_IN_PROGRESS)
    op.execute(CLEAR_NEXT)
    op.execute(END)
    op.execute(BEGIN)
    op.execute(SWITCH)
    op.execute(SWITCH_TEAM)


def downgrade() -> None:
    op.execute("SELECT end_memory_embedder_migration()")  # one in progress is abandoned
    for signature in reversed(FUNCTIONS):
        op.execute(f"DROP FUNCTION {signature}")
    op.execute(
        "DROP FUNCTION memory_team_index_definitions(uuid, bigint, integer, boolean, boolean)"
    )
    op.execute(crowded.TEAM_INDEX_DEFINITIONS)
    op.execute("DROP FUNCTION memory_team_lists(uuid, boolean)")
    op.execute(crowded.TEAM_LISTS)
