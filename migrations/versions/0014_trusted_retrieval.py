"""Retrieval and audit you can trust: counted once, bounded, sampled fairly, per team.

- `retrieve_memories` records one access of each memory it returns in a statement of its own,
  after its query: inside the query, a generic plan ran the update once per output row.
  `semantic` is clipped to [0, 1] (a pinned or linked memory more relevant than the pool
  scaled above 1). A conversation without messages gives no continuity.
- A query's words are bounded: past MAX_QUERY_WORDS words (in either configuration), the
  rarest in the team count, the first in the query among equals; a long query costs no more
  than a query of that many words.
- A team's sample (which words are common, the typical distance of `search_memories`) is
  its first memories by a hash of their ids (`idx_memory_team_sample`), not by id: ordered
  ids (UUIDv7, ids kept by an import) made it a biased sample.
- `team.language` (ISO 639-1, default English) stems the memories without an agent and the
  queries of no agent, as `personality.language` does an agent's; existing team-wide
  memories are recomputed.
- The audit trigger dates a row after the earlier rows of the same memory *of its team*,
  and the team-less `reconstruct_memory_at(uuid, timestamptz)` and
  `update_memory_access(uuid[])` refuse an id that names memories of several teams.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

foundation = importlib.import_module("skill_store._migrations.versions.0001_foundation")
search = importlib.import_module("skill_store._migrations.versions.0002_search")
tenancy = importlib.import_module("skill_store._migrations.versions.0004_tenancy")
team_search = importlib.import_module("skill_store._migrations.versions.0006_team_search")
audit = importlib.import_module("skill_store._migrations.versions.0009_audit_and_members")
retrieval = importlib.import_module("skill_store._migrations.versions.0010_retrieval")
bounded = importlib.import_module("skill_store._migrations.versions.0012_bounded_retrieval")
dated = importlib.import_module("skill_store._migrations.versions.0013_dated_creation")

MAX_QUERY_WORDS = 64
LEXICAL_EXACT_MAX_ROWS = 2000
WORD_SAMPLE_ROWS = 256
COMMON_WORD_SHARE = 0.02
RARE_WORD_MAX_ROWS = 1000
LEXICAL_MAX_ROWS = 2000
CONTRAST_SAMPLE_ROWS = 32

SAMPLE_INDEX = (
    "CREATE INDEX idx_memory_team_sample ON memory (team_id, uuid_hash_extended(id, 0))"
    " WHERE status = 'active'"
)

TEAM_LANGUAGE = (
    "ALTER TABLE team ADD COLUMN language text NOT NULL DEFAULT 'en'"
    " CONSTRAINT ck_team_language_format CHECK (language ~ '^[a-z]{2}$')"
)

SET_TEXT_CONFIG = """
CREATE OR REPLACE FUNCTION trigger_set_memory_text_config() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.text_config := coalesce(
        (SELECT text_search_config(a.personality ->> 'language')
         FROM agent AS a WHERE a.team_id = NEW.team_id AND a.id = NEW.agent_id),
        (SELECT text_search_config(t.language) FROM team AS t WHERE t.id = NEW.team_id),
        'simple');
    RETURN NEW;
END
$$"""

# Not a change of any memory's content: neither audited nor a new `updated_at`.
RECOMPUTE_TEAM_WIDE = """
UPDATE memory AS m SET text_config = text_search_config(t.language)
FROM team AS t
WHERE t.id = m.team_id AND m.agent_id IS NULL
  AND m.text_config <> text_search_config(t.language)"""

RETRIEVABLE = retrieval.RETRIEVABLE

# The query's words that memory m holds, in its own configuration (the query's: `own`
# words) or another (the query's words as written), each counting its inverse document
# frequency.
LEXICAL_SCORE = """(
            SELECT coalesce(sum(w.idf), 0)
            FROM unnest(word_own, word_query, word_idf) AS w (own, query, idf)
            WHERE w.own = (m.text_config = config) AND m.search_text @@ w.query
        )"""


def lexical_hits(finds: str) -> str:
    """SQL for the ids of the `depth` memories of highest lexical score that `finds`."""
    return f"""
            lexical_ids := ARRAY(
                SELECT x.id
                FROM (
                    SELECT m.id, {LEXICAL_SCORE} AS score
                    FROM memory AS m
                    WHERE {finds} AND {RETRIEVABLE}
                ) AS x
                WHERE x.score > 0
                ORDER BY x.score DESC, x.id
                LIMIT depth
            );"""


def decay(age: str) -> str:
    """SQL for 0.5 ** (`age`, an interval, in half-lives), bounded below; 1 for a negative age."""
    return f"exp(greatest(-700, ln(0.5) * greatest(0, extract(epoch FROM {age})) / half_life))"


# Since the memory was created or last accessed before `at`.
RECENCY = decay(
    "at - greatest(m.created_at, CASE WHEN m.last_accessed_at <= at THEN m.last_accessed_at END)"
)

# In a small team its memories are read in the team's key order and tested (a few hundred
# rows cost less than merging the words' entries of every team in the index); in a large
# one they are found by the team's word.
HOLDS = "m.search_text @@ finding"
FINDS = "memory_team_text(m.team_id, m.search_text) @@ (team_word && finding)"

RETRIEVE_MEMORIES = f"""
CREATE OR REPLACE FUNCTION retrieve_memories(
    query vector,
    query_text text,
    team uuid,
    agent uuid,
    person uuid,
    conversation uuid,
    lim integer,
    depth integer,
    weights double precision[],
    fallback_weights double precision[],
    half_life double precision,
    at timestamptz,
    record_access boolean,
    exact_max_rows integer
) RETURNS TABLE (
    id uuid,
    score double precision,
    semantic double precision,
    recency double precision,
    importance double precision,
    continuity double precision,
    relationship double precision
)
LANGUAGE plpgsql VOLATILE SECURITY INVOKER ROWS 20
SET client_min_messages = warning
AS $$
#variable_conflict use_column
DECLARE
    -- The query's configuration: its agent's language, else its team's.
    config regconfig := coalesce(
        (SELECT text_search_config(a.personality ->> 'language') FROM agent AS a
         WHERE a.team_id = team AND a.id = agent),
        (SELECT text_search_config(t.language) FROM team AS t WHERE t.id = team),
        'simple');
    -- The word naming the team, as memory_team_text adds it to the team's memories.
    team_word tsquery := lexeme_query((tsvector_to_array(memory_team_text(team, '')))[1]);
    -- The query's words: each matched in memories of the query's configuration (own) or
    -- of another (plain: as written), its place in the query, its query, its share of the
    -- team's sample, its document frequency and its rarity (idf).
    word_own boolean[];
    word_lexeme text[];
    word_first integer[];
    word_query tsquery[];
    sampled float8[];
    sample_size bigint;
    word_held float8[];
    word_idf float8[];
    finding tsquery;  -- the words that find lexical candidates, OR'ed
    indexed float8;
    total float8;
    rows_found float8 := 0;
    word integer;
    lexical_ids uuid[];  -- the lexical candidates, best first
    held float8;
    types memory_type_enum[];  -- NULL: every type, as RETRIEVABLE reads it
    hit record;
    returned uuid[] := '{{}}';
BEGIN
    at := coalesce(at, now());
    IF weights IS NULL THEN
        SELECT ARRAY[
            coalesce((w ->> 'semantic')::float8, fallback_weights[1]),
            coalesce((w ->> 'recency')::float8, fallback_weights[2]),
            coalesce((w ->> 'importance')::float8, fallback_weights[3]),
            coalesce((w ->> 'continuity')::float8, fallback_weights[4]),
            coalesce((w ->> 'relationship')::float8, fallback_weights[5])]
        INTO weights
        FROM agent AS a, LATERAL (SELECT a.memory_config -> 'retrieval_weights' AS w) AS r
        WHERE a.team_id = team AND a.id = agent;
        weights := coalesce(weights, fallback_weights);
    END IF;

    SELECT array_agg(w.own ORDER BY w.own DESC, w.lexeme),
           array_agg(w.lexeme ORDER BY w.own DESC, w.lexeme),
           array_agg(w.first ORDER BY w.own DESC, w.lexeme)
    INTO word_own, word_lexeme, word_first
    FROM (
        SELECT true AS own, l.lexeme, l.positions[1] AS first
        FROM unnest(to_tsvector(config, coalesce(query_text, ''))) AS l
        UNION ALL
        SELECT false, l.lexeme, l.positions[1]
        FROM unnest(to_tsvector('simple', coalesce(query_text, ''))) AS l
    ) AS w;

    IF word_lexeme IS NOT NULL THEN
        SELECT c.reltuples INTO indexed
        FROM pg_class AS c WHERE c.oid = to_regclass(memory_team_index_name(team));
        IF coalesce(indexed, 0) <= {LEXICAL_EXACT_MAX_ROWS} THEN
            -- In the order of idx_memory_team_type, to stop at the bound.
            SELECT count(*) INTO total
            FROM (
                SELECT FROM memory AS m WHERE {RETRIEVABLE}
                ORDER BY m.memory_type
                LIMIT {LEXICAL_EXACT_MAX_ROWS} + 1
            ) AS c;
        END IF;
        IF total IS NULL OR total > {LEXICAL_EXACT_MAX_ROWS}
           OR cardinality(word_lexeme) > {MAX_QUERY_WORDS} THEN
            -- Each word's share of the team's first memories by a hash of their ids (a
            -- random sample, whatever the ids), in any configuration: the index finds them
            -- all. Their words are read once, beside the query's.
            WITH sample AS MATERIALIZED (
                SELECT m.search_text FROM memory AS m
                WHERE m.team_id = team AND m.status = 'active'
                ORDER BY uuid_hash_extended(m.id, 0)
                LIMIT {WORD_SAMPLE_ROWS}
            ), holders AS (
                SELECT l.lexeme, count(*) AS memories
                FROM sample AS s
                CROSS JOIN LATERAL unnest(tsvector_to_array(s.search_text)) AS l (lexeme)
                WHERE l.lexeme IN (SELECT unnest(word_lexeme))
                GROUP BY l.lexeme
            )
            SELECT array_agg(coalesce(h.memories, 0)::float8 / greatest(z.size, 1) ORDER BY w.i),
                   min(z.size)
            INTO sampled, sample_size
            FROM unnest(word_lexeme) WITH ORDINALITY AS w (lexeme, i)
            CROSS JOIN (SELECT count(*) AS size FROM sample) AS z
            LEFT JOIN holders AS h ON h.lexeme = w.lexeme;
        END IF;
        IF cardinality(word_lexeme) > {MAX_QUERY_WORDS} THEN
            -- A long query: its words rarest in the team count, the first among equals. A
            -- sample of the whole team shows which words no memory holds: they go first.
            SELECT array_agg(k.own ORDER BY k.own DESC, k.lexeme),
                   array_agg(k.lexeme ORDER BY k.own DESC, k.lexeme),
                   array_agg(k.share ORDER BY k.own DESC, k.lexeme)
            INTO word_own, word_lexeme, sampled
            FROM (
                SELECT w.own, w.lexeme, w.share
                FROM unnest(word_own, word_lexeme, word_first, sampled)
                     AS w (own, lexeme, first, share)
                WHERE w.share > 0 OR sample_size >= {WORD_SAMPLE_ROWS}
                ORDER BY w.share, w.first, w.own DESC
                LIMIT {MAX_QUERY_WORDS}
            ) AS k;
        END IF;
        word_query := ARRAY(
            SELECT lexeme_query(l.lexeme)
            FROM unnest(word_lexeme) WITH ORDINALITY AS l (lexeme, i)
            ORDER BY l.i);

        IF total IS NOT NULL AND total <= {LEXICAL_EXACT_MAX_ROWS} THEN
            -- Every word finds candidates; each is counted among the memories holding any,
            -- read once.
            finding := (SELECT string_agg(q::text, ' | ')::tsquery FROM unnest(word_query) AS q);
            WITH matched AS MATERIALIZED (
                SELECT m.text_config = config AS own, m.search_text
                FROM memory AS m
                WHERE {HOLDS} AND {RETRIEVABLE}
            )
            SELECT array_agg(
                       (SELECT count(*) FROM matched AS x
                        WHERE x.own = w.own AND x.search_text @@ w.query)::float8
                       ORDER BY w.i)
            INTO word_held
            FROM unnest(word_own, word_query) WITH ORDINALITY AS w (own, query, i);
        ELSE
            -- The team's size is its index's row count (kept by VACUUM and ANALYZE),
            -- counted when it has no index yet. A common word's count is estimated from the
            -- sample: it scores candidates but does not find them. The others are counted
            -- (up to RARE_WORD_MAX_ROWS: a word past that is common too).
            IF indexed IS NULL THEN
                SELECT count(*) INTO total FROM memory AS m WHERE {RETRIEVABLE};
            ELSE
                total := greatest(indexed, {LEXICAL_EXACT_MAX_ROWS} + 1);
            END IF;
            word_held := '{{}}';  -- filled word by word below
            FOR word IN 1 .. cardinality(word_query) LOOP
                IF array_position(word_lexeme, word_lexeme[word]) < word THEN
                    word_held[word] := word_held[array_position(word_lexeme, word_lexeme[word])];
                ELSIF sampled[word] >= {COMMON_WORD_SHARE} THEN
                    word_held[word] := sampled[word] * total;
                ELSE
                    SELECT count(*) INTO held
                    FROM (
                        SELECT FROM memory AS m
                        WHERE memory_team_text(m.team_id, m.search_text)
                              @@ (team_word && word_query[word])
                          AND {RETRIEVABLE}
                        LIMIT {RARE_WORD_MAX_ROWS} + 1
                    ) AS h;
                    word_held[word] := held;
                END IF;
            END LOOP;
            -- The rare words find candidates, rarest first, until they hold enough.
            FOR word IN
                SELECT min(g.n) FROM generate_subscripts(word_query, 1) AS g (n)
                WHERE sampled[g.n] < {COMMON_WORD_SHARE}
                  AND word_held[g.n] BETWEEN 1 AND {RARE_WORD_MAX_ROWS}
                GROUP BY word_lexeme[g.n]
                ORDER BY min(word_held[g.n]), min(g.n)
            LOOP
                EXIT WHEN rows_found + word_held[word] > {LEXICAL_MAX_ROWS};
                finding := CASE WHEN finding IS NULL THEN word_query[word]
                                ELSE finding || word_query[word] END;
                rows_found := rows_found + word_held[word];
            END LOOP;
        END IF;
        SELECT array_agg(
                   ln(1 + (total - least(h.held, total) + 0.5) / (least(h.held, total) + 0.5))
                   ORDER BY h.i)
        INTO word_idf
        FROM unnest(word_held) WITH ORDINALITY AS h (held, i);
        IF finding IS NOT NULL AND total <= {LEXICAL_EXACT_MAX_ROWS} THEN{lexical_hits(HOLDS)}
        ELSIF finding IS NOT NULL THEN{lexical_hits(FINDS)}
        END IF;
    END IF;


    FOR hit IN
        WITH vector_hits AS (
            SELECT s.id, s.similarity
            FROM search_memories(query, team, agent, person, types, depth, NULL, exact_max_rows)
                 AS s
        ), lexical_hits AS (
            SELECT unnest(lexical_ids) AS id
        ), found AS (
            -- The vector hits' similarity as found: their embeddings are not read again.
            SELECT m.id, coalesce(v.similarity, 1 - (m.embedding <=> query)) AS similarity,
                   {LEXICAL_SCORE} AS lexical
            FROM memory AS m
            LEFT JOIN vector_hits AS v ON v.id = m.id
            WHERE m.team_id = team
              AND m.id = ANY (ARRAY(SELECT h.id FROM vector_hits AS h
                                    UNION SELECT h.id FROM lexical_hits AS h))
        ), bounds AS (
            SELECT min(f.similarity) AS low, max(f.similarity) AS high,
                   coalesce(max(f.lexical), 0) AS top_lexical
            FROM found AS f
        ), pool AS (
            SELECT f.id,
                   memory_relevance(f.similarity, f.lexical, b.low, b.high, b.top_lexical)
                       AS relevance
            FROM found AS f, bounds AS b
            ORDER BY 2 DESC, 1
            LIMIT lim
        ), strongest AS (
            SELECT p.id, m.user_id, lower(m.subject) AS subject,
                   coalesce(m.related_to, '{{}}') || coalesce(m.contradicts, '{{}}') AS links
            FROM pool AS p JOIN memory AS m ON m.team_id = team AND m.id = p.id
            ORDER BY p.relevance DESC, p.id
            LIMIT 3
        ), extra AS MATERIALIZED (
            -- The memories linked to the three strongest, and the pinned ones.
            SELECT m.id, 1 - (m.embedding <=> query) AS similarity, {LEXICAL_SCORE} AS lexical
            FROM memory AS m
            WHERE {RETRIEVABLE}
              AND m.id NOT IN (SELECT p.id FROM pool AS p)
              AND m.id = ANY (ARRAY(
                  SELECT unnest(s.links) FROM strongest AS s
                  UNION ALL
                  SELECT k.id FROM memory AS k WHERE k.team_id = team AND k.is_pinned))
        ), candidates AS (
            SELECT p.id, p.relevance FROM pool AS p
            UNION ALL
            SELECT x.id, memory_relevance(x.similarity, x.lexical, b.low, b.high, b.top_lexical)
            FROM extra AS x, bounds AS b
        ), scored AS (
            SELECT
                m.id,
                m.is_pinned,
                -- Scaled over the pool; a pinned or linked memory may lie beyond it.
                coalesce(greatest(0, least(1, CASE
                    WHEN r.high = r.low THEN c.relevance / nullif(r.high, 0)
                    ELSE (c.relevance - r.low) / (r.high - r.low)
                END)), 0) AS semantic,
                {RECENCY} AS recency,
                m.importance / 10.0 * m.confidence AS importance,
                CASE
                    WHEN m.source_conversation_id = conversation THEN 1
                    WHEN v.user_id = person AND v.agent_id = agent
                         AND v.message_count > 0
                    THEN 0.5 * {decay("at - v.last_message_at")}
                    ELSE 0
                END AS continuity,
                CASE
                    WHEN EXISTS (SELECT FROM strongest AS s WHERE m.id = ANY (s.links)) THEN 1
                    WHEN m.user_id = person
                      OR EXISTS (SELECT FROM strongest AS s WHERE s.id <> m.id
                                 AND (s.user_id = m.user_id OR s.subject = lower(m.subject)))
                    THEN 0.5
                    ELSE 0
                END AS relationship
            FROM candidates AS c
            CROSS JOIN (SELECT min(p.relevance) AS low, max(p.relevance) AS high FROM pool AS p)
                AS r
            JOIN memory AS m ON m.team_id = team AND m.id = c.id
            LEFT JOIN conversation AS v
                ON v.team_id = m.team_id AND v.id = m.source_conversation_id
        )
        SELECT s.id, s.is_pinned,
               weights[1] * s.semantic + weights[2] * s.recency + weights[3] * s.importance
               + weights[4] * s.continuity + weights[5] * s.relationship AS score,
               s.semantic, s.recency, s.importance::double precision AS importance,
               s.continuity::double precision AS continuity,
               s.relationship::double precision AS relationship
        FROM scored AS s
        ORDER BY s.is_pinned DESC, score DESC, s.id
        LIMIT lim
    LOOP
        id := hit.id;
        score := hit.score;
        semantic := hit.semantic;
        recency := hit.recency;
        importance := hit.importance;
        continuity := hit.continuity;
        relationship := hit.relationship;
        returned := returned || hit.id;
        RETURN NEXT;
    END LOOP;
    -- Its own statement: inside the query, a generic plan may run it once per output row.
    IF record_access AND cardinality(returned) > 0 THEN
        PERFORM update_memory_access(team, returned);
    END IF;
END
$$"""

# A candidate's relevance: its similarity and lexical score, each scaled to [0, 1] over the
# found candidates (their lowest and highest similarity, highest lexical score), averaged;
# a side that found nothing is left out. Plain expressions, so that the planner inlines it.
MEMORY_RELEVANCE = """
CREATE FUNCTION memory_relevance(
    similarity double precision,
    lexical double precision,
    low double precision,
    high double precision,
    top_lexical double precision
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN top_lexical > 0 AND high IS NOT NULL THEN (
            CASE
                WHEN similarity IS NULL THEN 0
                WHEN high = low THEN 1
                ELSE greatest(0, least(1, (similarity - low) / (high - low)))
            END + least(1, lexical / top_lexical)) / 2
        WHEN top_lexical > 0 THEN least(1, lexical / top_lexical)
        WHEN high IS NULL OR similarity IS NULL THEN 0
        WHEN high = low THEN 1
        ELSE greatest(0, least(1, (similarity - low) / (high - low)))
    END
$$"""

# 0006's search, its typical distance taken from a sample by a hash of the ids.
CONTRAST_SAMPLE_BY_ID = f"""ORDER BY m.id
                LIMIT {CONTRAST_SAMPLE_ROWS}"""
CONTRAST_SAMPLE_BY_HASH = f"""ORDER BY uuid_hash_extended(m.id, 0)
                LIMIT {CONTRAST_SAMPLE_ROWS}"""
assert team_search.SEARCH_MEMORIES.count(CONTRAST_SAMPLE_BY_ID) == 1
SEARCH_MEMORIES = team_search.SEARCH_MEMORIES.replace(
    "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"
).replace(CONTRAST_SAMPLE_BY_ID, CONTRAST_SAMPLE_BY_HASH)

LOG_MEMORY_CHANGE = """
CREATE OR REPLACE FUNCTION trigger_log_memory_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
DECLARE
    actor text := coalesce(nullif(current_setting('skill_store.actor', true), ''), 'system');
    why text := nullif(current_setting('skill_store.reason', true), '');
    changed memory := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    logged_at timestamptz;
BEGIN
    -- The time of the change; a creation dated before its transaction (an import), by its
    -- created_at. After every earlier row of the same memory of the team, so that they
    -- keep their order.
    SELECT GREATEST(CASE WHEN TG_OP = 'INSERT' AND NEW.created_at < now()
                         THEN NEW.created_at ELSE clock_timestamp() END,
                    max(l.created_at) + interval '1 microsecond')
    INTO logged_at FROM memory_log AS l
    WHERE l.team_id = changed.team_id AND l.memory_id = changed.id;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO memory_log (memory_id, team_id, action, new_content, new_importance,
                                new_tier, new_status, changed_by, reason, conversation_id,
                                created_at)
        VALUES (NEW.id, NEW.team_id, 'created', NEW.content, NEW.importance, NEW.tier::text,
                NEW.status::text, actor, why, NEW.source_conversation_id, logged_at);
        RETURN NULL;
    END IF;

    IF TG_OP = 'DELETE' THEN
        INSERT INTO memory_log (memory_id, team_id, action, old_content, old_importance,
                                old_tier, old_status, changed_by, reason, conversation_id,
                                created_at)
        VALUES (OLD.id, OLD.team_id, 'deleted', OLD.content, OLD.importance, OLD.tier::text,
                OLD.status::text, actor, why, OLD.source_conversation_id, logged_at);
        RETURN NULL;
    END IF;

    INSERT INTO memory_log (memory_id, team_id, action, old_content, new_content,
                            old_importance, new_importance, old_tier, new_tier, old_status,
                            new_status, changed_by, reason, conversation_id, related_memory_ids,
                            created_at)
    VALUES (
        NEW.id,
        NEW.team_id,
        CASE
            WHEN NEW.status IS DISTINCT FROM OLD.status AND NEW.status <> 'active'
                THEN NEW.status::text
            WHEN NEW.tier < OLD.tier THEN 'promoted'
            WHEN NEW.tier > OLD.tier THEN 'demoted'
            ELSE 'updated'
        END,
        OLD.content, NEW.content, OLD.importance, NEW.importance, OLD.tier::text,
        NEW.tier::text, OLD.status::text, NEW.status::text, actor, why,
        NEW.source_conversation_id,
        CASE WHEN NEW.superseded_by IS DISTINCT FROM OLD.superseded_by
             THEN ARRAY[NEW.superseded_by] END,
        logged_at
    );
    RETURN NULL;
END
$$"""

# The team-less overloads of 0001, for raw SQL: an id must name the memory of one team.
RECONSTRUCT_MEMORY_AT = """
CREATE OR REPLACE FUNCTION reconstruct_memory_at(target_memory_id uuid, at timestamptz)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    teams uuid[] := ARRAY(
        SELECT DISTINCT l.team_id FROM memory_log AS l WHERE l.memory_id = target_memory_id);
BEGIN
    IF cardinality(teams) > 1 THEN
        RAISE EXCEPTION 'memory % has a history in % teams', target_memory_id, cardinality(teams)
            USING ERRCODE = 'cardinality_violation',
                  HINT = 'Name its team: reconstruct_memory_at(team_id, memory_id, at).';
    END IF;
    RETURN reconstruct_memory_at(teams[1], target_memory_id, at);
END
$$"""

UPDATE_MEMORY_ACCESS = """
CREATE OR REPLACE FUNCTION update_memory_access(memory_ids uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    shared uuid;
    touched integer;
BEGIN
    SELECT m.id INTO shared FROM memory AS m WHERE m.id = ANY (memory_ids)
    GROUP BY m.id HAVING count(*) > 1 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'memory % belongs to several teams', shared
            USING ERRCODE = 'cardinality_violation',
                  HINT = 'Name its team: update_memory_access(team_id, memory_ids).';
    END IF;
    WITH locked AS (
        SELECT m.id, m.team_id FROM memory AS m WHERE m.id = ANY (memory_ids)
        ORDER BY m.team_id, m.id FOR UPDATE
    )
    UPDATE memory AS m
    SET access_count = m.access_count + 1, last_accessed_at = now()
    FROM locked WHERE m.team_id = locked.team_id AND m.id = locked.id;
    GET DIAGNOSTICS touched = ROW_COUNT;
    RETURN touched;
END
$$"""

# Checked before a search embeds its query: only the vectors it may return count.
MEMORY_EMBEDDING_MODELS = f"""
CREATE FUNCTION memory_embedding_models(
    team uuid,
    agent uuid,
    person uuid,
    types memory_type_enum[]
) RETURNS text[]
LANGUAGE sql STABLE SECURITY INVOKER AS $$
    SELECT ARRAY[min(m.embedding_model), max(m.embedding_model)]
    FROM memory AS m
    WHERE {search.RETRIEVABLE}
$$"""

COMMENT = (
    "The team''s memories retrievable as by search_memories (embedded or not) for a query"
    " vector and text, at most lim, pinned first, then by score, then by id; with each"
    " signal (semantic, recency, importance, continuity, relationship) in [0, 1] and the"
    " score, their sum weighted by weights (in that order; NULL: the agent''s"
    " retrieval_weights, else fallback_weights). The query''s words are read in its agent''s"
    f" language, else its team''s; of more than {MAX_QUERY_WORDS}, the rarest in the team"
    " count. at: the moment of the query (NULL: now). record_access counts one access of"
    " each memory returned."
)


def upgrade() -> None:
    op.execute(TEAM_LANGUAGE)
    op.execute(SET_TEXT_CONFIG)
    op.execute("ALTER TABLE memory DISABLE TRIGGER trg_memory_log_update")
    op.execute("ALTER TABLE memory DISABLE TRIGGER trg_memory_updated_at")
    op.execute(RECOMPUTE_TEAM_WIDE)
    op.execute("ALTER TABLE memory ENABLE TRIGGER trg_memory_updated_at")
    op.execute("ALTER TABLE memory ENABLE TRIGGER trg_memory_log_update")
    op.execute(SAMPLE_INDEX)
    op.execute(MEMORY_RELEVANCE)
    op.execute(MEMORY_EMBEDDING_MODELS)
    op.execute(RETRIEVE_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {retrieval.SIGNATURE} IS '{COMMENT}'")
    op.execute(SEARCH_MEMORIES)
    op.execute(LOG_MEMORY_CHANGE.format(schema=tenancy.current_schema()))
    op.execute(RECONSTRUCT_MEMORY_AT)
    op.execute(UPDATE_MEMORY_ACCESS)


def downgrade() -> None:
    op.execute(audit.without_flag(audit.ACCESS_FUNCTIONS["update_memory_access(uuid[])"]))
    op.execute("DROP FUNCTION reconstruct_memory_at(uuid, timestamptz)")
    op.execute(foundation.FUNCTIONS["reconstruct_memory_at(uuid, timestamptz)"])
    dated.upgrade()
    op.execute(team_search.SEARCH_MEMORIES.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute(bounded.RETRIEVE_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {retrieval.SIGNATURE} IS '{retrieval.COMMENT}'")
    op.execute(
        "DROP FUNCTION memory_relevance(double precision, double precision,"
        " double precision, double precision, double precision)"
    )
    op.execute("DROP FUNCTION memory_embedding_models(uuid, uuid, uuid, memory_type_enum[])")
    op.execute("DROP INDEX idx_memory_team_sample")
    op.execute("ALTER TABLE memory DISABLE TRIGGER trg_memory_log_update")
    op.execute("ALTER TABLE memory DISABLE TRIGGER trg_memory_updated_at")
    op.execute(
        "UPDATE memory SET text_config = 'simple'::regconfig"
        " WHERE agent_id IS NULL AND text_config <> 'simple'::regconfig"
    )
    op.execute("ALTER TABLE memory ENABLE TRIGGER trg_memory_updated_at")
    op.execute("ALTER TABLE memory ENABLE TRIGGER trg_memory_log_update")
    op.execute(retrieval.SET_TEXT_CONFIG.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("ALTER TABLE team DROP COLUMN language")
