"""Retrieval: full text beside the vectors, fused and scored by five signals in one call.

- `memory.text_config`: the text-search configuration of the memory's words, set on insert
  from its agent's `personality.language` (`text_search_config`: ISO 639-1 to a
  configuration of the server, `simple` when there is none or no agent).
- `memory.search_text`: the generated `tsvector` of content and subject in that
  configuration, with a GIN index.
- `memory_text_query(config, text)`: the words of a text as a tsquery that matches any of
  them (OR), not all (websearch_to_tsquery's AND misses most answers to a question).
- `retrieve_memories(...)`: vector candidates from `search_memories`, lexical candidates
  ranked by the summed inverse document frequency (in the team) of the query words they
  hold, fused by a convex combination of normalised scores, then scored by
  semantic, recency, importance, continuity and relationship signals (see
  `MemoryRepository.retrieve`).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

search = importlib.import_module("skill_store._migrations.versions.0002_search")
audit = importlib.import_module("skill_store._migrations.versions.0009_audit_and_members")

# ISO 639-1 codes of the languages PostgreSQL has a text-search configuration for.
LANGUAGES = {
    "ar": "arabic",
    "ca": "catalan",
    "da": "danish",
    "de": "german",
    "el": "greek",
    "en": "english",
    "es": "spanish",
    "et": "estonian",
    "eu": "basque",
    "fi": "finnish",
    "fr": "french",
    "ga": "irish",
    "hi": "hindi",
    "hu": "hungarian",
    "hy": "armenian",
    "id": "indonesian",
    "it": "italian",
    "lt": "lithuanian",
    "nb": "norwegian",
    "ne": "nepali",
    "nl": "dutch",
    "nn": "norwegian",
    "no": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sr": "serbian",
    "sv": "swedish",
    "ta": "tamil",
    "tr": "turkish",
    "yi": "yiddish",
}
CASES = "\n".join(f"        WHEN '{code}' THEN '{name}'" for code, name in LANGUAGES.items())

# Some configurations are newer than PostgreSQL 15: one the server lacks is `simple`.
TEXT_SEARCH_CONFIG = f"""
CREATE FUNCTION text_search_config(language text) RETURNS regconfig
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(
        (SELECT c.oid::regconfig FROM pg_ts_config AS c
         WHERE c.cfgnamespace = 'pg_catalog'::regnamespace
           AND c.cfgname = CASE language
{CASES}
           END),
        'simple'::regconfig)
$$"""

MEMORY_TEXT_QUERY = r"""
CREATE FUNCTION memory_text_query(config regconfig, query text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT regexp_replace(plainto_tsquery(config, query)::text, ' (&|<[0-9]*-?>) ', ' | ', 'g')
        ::tsquery
$$"""

SET_TEXT_CONFIG = """
CREATE FUNCTION trigger_set_memory_text_config() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.text_config := coalesce(
        (SELECT text_search_config(a.personality ->> 'language')
         FROM agent AS a WHERE a.team_id = NEW.team_id AND a.id = NEW.agent_id),
        'simple');
    RETURN NEW;
END
$$"""

TEXT_CONFIG_TRIGGER = (
    "CREATE TRIGGER trg_memory_text_config BEFORE INSERT ON memory FOR EACH ROW"
    " EXECUTE FUNCTION trigger_set_memory_text_config()"
)

# Retrievable as by search_memories, embedded or not: lexical recall finds both.
RETRIEVABLE = search.RETRIEVABLE.replace("AND m.embedding IS NOT NULL", "")

SIGNATURE = (
    "retrieve_memories(vector, text, uuid, uuid, uuid, uuid, integer, integer,"
    " double precision[], double precision[], double precision, timestamp with time zone,"
    " boolean, integer)"
)

# How a candidate's similarity and lexical score become its relevance, given the bounds
# (lowest and highest similarity, highest lexical score) of the fused candidates: each is
# scaled to [0, 1] and the two averaged; a side that found nothing is left out.
RELEVANCE = """
    CASE
        WHEN b.top_lexical > 0 AND b.high IS NOT NULL THEN (near + lexical) / 2
        WHEN b.top_lexical > 0 THEN lexical
        ELSE coalesce(near, 0)
    END
    FROM (SELECT
        CASE
            WHEN b.high IS NULL THEN NULL
            WHEN x.similarity IS NULL THEN 0
            WHEN b.high = b.low THEN 1
            ELSE greatest(0, least(1, (x.similarity - b.low) / (b.high - b.low)))
        END AS near,
        CASE WHEN b.top_lexical > 0 THEN least(1, x.lexical / b.top_lexical) END AS lexical
    ) AS n"""


def decay(age: str) -> str:
    """SQL for 0.5 ** (`age`, an interval, in half-lives); 1 for a negative age.

    Bounded below (at about 1e-304) since exp() raises an error on underflow.
    """
    return f"exp(greatest(-700, ln(0.5) * greatest(0, extract(epoch FROM {age})) / half_life))"


# Since the memory was created or last accessed before `at`.
RECENCY = decay(
    "at - greatest(m.created_at, CASE WHEN m.last_accessed_at <= at THEN m.last_accessed_at END)"
)

# Lexical recall in one pass over the team's memories that hold a query word. A memory's
# words are matched in its own configuration: the agent's (`own` words) or, for one written
# in another (`simple` for a team-wide memory), the query's plain words. Its score is the
# sum of the inverse document frequencies (BM25's, in the team) of the query words it
# holds: short memories rarely repeat a word, and rare words tell most.
LEXICAL_CTES = f"""
    held AS (
        -- Each matching memory read once, its lexemes compared with the query's words.
        SELECT m.id, m.text_config = config AS own, t.lexeme
        FROM memory AS m
        CROSS JOIN LATERAL unnest(m.search_text) AS t
        WHERE (m.search_text @@ terms OR m.search_text @@ plain) AND {RETRIEVABLE}
          AND t.lexeme = ANY (CASE WHEN m.text_config = config THEN own_words ELSE plain_words END)
    ), rarity AS (
        SELECT h.own, h.lexeme,
               ln(1 + (total - count(*) + 0.5) / (count(*) + 0.5))::float8 AS idf
        FROM held AS h GROUP BY h.own, h.lexeme
    ), lexical AS (
        SELECT h.id, sum(r.idf) AS score
        FROM held AS h JOIN rarity AS r ON r.own = h.own AND r.lexeme = h.lexeme
        GROUP BY h.id
    )"""

# The signature of `retrieve_memories`, to the start of its body.
# client_min_messages: a query of stop words only draws a NOTICE from plainto_tsquery.
RETRIEVE_SIGNATURE = """CREATE FUNCTION retrieve_memories(
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
AS $$"""

# The weights: those given, else the agent's retrieval_weights, else the fallback.
WEIGHTS = """    IF weights IS NULL THEN
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
    END IF;"""

# The found candidates' (`found`: similarity and lexical score) relevance, the `lim` most
# relevant (`pool`) and the three strongest of those.
FUSION = f"""    ), bounds AS (
        SELECT min(f.similarity) AS low, max(f.similarity) AS high,
               coalesce(max(f.lexical), 0) AS top_lexical
        FROM found AS f
    ), pool AS (
        SELECT x.id, (SELECT {RELEVANCE}) AS relevance
        FROM found AS x, bounds AS b
        ORDER BY 2 DESC, 1
        LIMIT lim
    ), strongest AS (
        SELECT p.id, m.user_id, lower(m.subject) AS subject,
               coalesce(m.related_to, '{{}}') || coalesce(m.contradicts, '{{}}') AS links
        FROM pool AS p JOIN memory AS m ON m.team_id = team AND m.id = p.id
        ORDER BY p.relevance DESC, p.id
        LIMIT 3"""

# The pool, with the memories linked to its strongest and the pinned ones (`extra`),
# scored, ranked and returned, their access recorded if asked.
SCORING = f"""    ), candidates AS (
        SELECT p.id, p.relevance FROM pool AS p
        UNION ALL
        SELECT x.id, (SELECT {RELEVANCE}) FROM extra AS x, bounds AS b
    ), scored AS (
        SELECT
            m.id,
            m.is_pinned,
            coalesce(CASE
                WHEN r.high = r.low THEN least(1, c.relevance / nullif(r.high, 0))
                ELSE greatest(0, (c.relevance - r.low) / (r.high - r.low))
            END, 0) AS semantic,
            {RECENCY} AS recency,
            m.importance / 10.0 * m.confidence AS importance,
            CASE
                WHEN m.source_conversation_id = conversation THEN 1
                WHEN v.user_id = person AND v.agent_id = agent THEN
                    0.5 * {decay("at - v.last_message_at")}
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
        CROSS JOIN (SELECT min(p.relevance) AS low, max(p.relevance) AS high FROM pool AS p) AS r
        JOIN memory AS m ON m.team_id = team AND m.id = c.id
        LEFT JOIN conversation AS v
            ON v.team_id = m.team_id AND v.id = m.source_conversation_id
    ), ranked AS (
        SELECT s.*,
               weights[1] * s.semantic + weights[2] * s.recency + weights[3] * s.importance
               + weights[4] * s.continuity + weights[5] * s.relationship AS score
        FROM scored AS s
        ORDER BY s.is_pinned DESC, score DESC, s.id
        LIMIT lim
    )
    SELECT r.id, r.score, r.semantic, r.recency, r.importance::double precision,
           r.continuity::double precision, r.relationship::double precision
    FROM ranked AS r
    CROSS JOIN (
        SELECT CASE WHEN record_access
                    THEN update_memory_access(team, ARRAY(SELECT k.id FROM ranked AS k)) END
    ) AS touched
    ORDER BY r.is_pinned DESC, r.score DESC, r.id;"""

# `depth` candidates from each list; the `lim` most relevant of them, the retrievable
# memories linked to the three strongest, and the pinned ones are scored.
RETRIEVE_MEMORIES = f"""
{RETRIEVE_SIGNATURE}
#variable_conflict use_column
DECLARE
    config regconfig := coalesce(
        (SELECT text_search_config(a.personality ->> 'language') FROM agent AS a
         WHERE a.team_id = team AND a.id = agent),
        'simple');
    terms tsquery := memory_text_query(config, coalesce(query_text, ''));
    plain tsquery := memory_text_query('simple', coalesce(query_text, ''));
    own_words text[] := tsvector_to_array(to_tsvector(config, coalesce(query_text, '')));
    plain_words text[] := tsvector_to_array(to_tsvector('simple', coalesce(query_text, '')));
    types memory_type_enum[];  -- NULL: every type, as RETRIEVABLE reads it
    total bigint := 0;
BEGIN
    at := coalesce(at, now());
{WEIGHTS}
    IF numnode(terms) > 0 OR numnode(plain) > 0 THEN
        SELECT count(*) INTO total FROM memory AS m WHERE {RETRIEVABLE};
    END IF;

    RETURN QUERY
    WITH {LEXICAL_CTES}, vector_hits AS (
        SELECT s.id FROM search_memories(query, team, agent, person, types, depth, NULL,
                                         exact_max_rows) AS s
    ), lexical_hits AS (
        SELECT x.id FROM lexical AS x ORDER BY x.score DESC, x.id LIMIT depth
    ), found AS (
        SELECT m.id, 1 - (m.embedding <=> query) AS similarity,
               coalesce(x.score, 0) AS lexical
        FROM memory AS m
        LEFT JOIN lexical AS x ON x.id = m.id
        WHERE m.team_id = team
          AND m.id IN (SELECT h.id FROM vector_hits AS h UNION SELECT h.id FROM lexical_hits AS h)
{FUSION}
    ), extra AS (
        SELECT m.id, 1 - (m.embedding <=> query) AS similarity,
               coalesce(x.score, 0) AS lexical
        FROM memory AS m
        LEFT JOIN lexical AS x ON x.id = m.id
        WHERE {RETRIEVABLE}
          AND m.id NOT IN (SELECT p.id FROM pool AS p)
          AND (m.is_pinned OR m.id IN (SELECT unnest(s.links) FROM strongest AS s))
{SCORING}
END
$$"""

COMMENT = (
    "The team''s memories retrievable as by search_memories (embedded or not) for a query"
    " vector and text, at most lim, pinned first, then by score, then by id; with each"
    " signal (semantic, recency, importance, continuity, relationship) and the score, their"
    " sum weighted by weights (in that order; NULL: the agent''s retrieval_weights, else"
    " fallback_weights). at: the moment of the query (NULL: now). record_access counts one"
    " access of each memory returned."
)


def upgrade() -> None:
    op.execute(TEXT_SEARCH_CONFIG)
    op.execute(MEMORY_TEXT_QUERY)
    op.execute("ALTER TABLE memory ADD COLUMN text_config regconfig NOT NULL DEFAULT 'simple'")
    # Not a change of any memory's content: neither audited nor a new `updated_at`.
    op.execute("ALTER TABLE memory DISABLE TRIGGER trg_memory_log_update")
    op.execute("ALTER TABLE memory DISABLE TRIGGER trg_memory_updated_at")
    op.execute(
        "UPDATE memory AS m SET text_config = text_search_config(a.personality ->> 'language')"
        " FROM agent AS a WHERE a.team_id = m.team_id AND a.id = m.agent_id"
    )
    op.execute("ALTER TABLE memory ENABLE TRIGGER trg_memory_updated_at")
    op.execute("ALTER TABLE memory ENABLE TRIGGER trg_memory_log_update")
    op.execute(
        "ALTER TABLE memory ADD COLUMN search_text tsvector GENERATED ALWAYS AS"
        " (to_tsvector(text_config, content || ' ' || coalesce(subject, ''))) STORED"
    )
    op.execute("CREATE INDEX idx_memory_search_text ON memory USING gin (search_text)")
    op.execute(SET_TEXT_CONFIG)
    op.execute(TEXT_CONFIG_TRIGGER)
    op.execute(RETRIEVE_MEMORIES)
    op.execute(f"COMMENT ON FUNCTION {SIGNATURE} IS '{COMMENT}'")
    audited((*audit.LOGGED_COLUMNS, "text_config"))


def audited(columns: tuple[str, ...]) -> None:
    """The audit of updates, logging a change of any of `columns`."""
    op.execute("DROP TRIGGER trg_memory_log_update ON memory")
    op.execute(audit.log_update_trigger(audit.changed(columns)))


def downgrade() -> None:
    audited(audit.LOGGED_COLUMNS)
    op.execute(f"DROP FUNCTION {SIGNATURE}")
    op.execute("DROP TRIGGER trg_memory_text_config ON memory")
    op.execute("DROP FUNCTION trigger_set_memory_text_config()")
    op.execute("ALTER TABLE memory DROP COLUMN search_text")
    op.execute("ALTER TABLE memory DROP COLUMN text_config")
    op.execute("DROP FUNCTION memory_text_query(regconfig, text)")
    op.execute("DROP FUNCTION text_search_config(text)")
