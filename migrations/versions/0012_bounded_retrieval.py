"""Retrieval that reads a bounded part of a large team.

`retrieve_memories` of 0010 read every memory of the team holding a query word, counted
the team's memories and read them all to find the pinned ones: 0.8 s for a query of common
words in a team of 25,000 memories. Now:

- `idx_memory_team_text`, a GIN index of `memory_team_text(team_id, search_text)` (the
  memory's words and one naming its team), finds a team's memories holding a word without
  reading any other team's; it replaces `idx_memory_search_text`, which could not;
- in a team of at most LEXICAL_EXACT_MAX_ROWS retrievable memories, each query word's
  document frequency is counted and every query word finds candidates, as before;
- in a larger team, the team's size is the row count of its HNSW index (`reltuples`, kept
  by VACUUM and ANALYZE; counted when the team has no index yet), and a word is *common*
  when at least COMMON_WORD_SHARE of the team's first WORD_SAMPLE_ROWS memories by id (a
  random sample, as ids are random) hold it. A common word's document frequency is
  estimated from the sample; it scores candidates but does not find them: a memory holding
  it is hardly evidence (its inverse document frequency is at most ln(1 + 1 / share)).
  The other words are counted (up to RARE_WORD_MAX_ROWS each: a word past that is common
  too) and find candidates, the rarest first, until they hold LEXICAL_MAX_ROWS memories;
- the pinned memories are read from `idx_memory_team_pinned`, the linked ones by their keys;
- `memory_text_query` goes: the query's words are matched one by one (`lexeme_query`).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

retrieval = importlib.import_module("skill_store._migrations.versions.0010_retrieval")

LEXICAL_EXACT_MAX_ROWS = 2000
WORD_SAMPLE_ROWS = 256
COMMON_WORD_SHARE = 0.02
RARE_WORD_MAX_ROWS = 1000
LEXICAL_MAX_ROWS = 2000

# A lexeme as a tsquery of itself alone: quoted, so that no parser changes it.
LEXEME_QUERY = r"""
CREATE FUNCTION lexeme_query(lexeme text) RETURNS tsquery
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''')::tsquery
$$"""

# No parser makes a lexeme with a space: the team's word is no memory's word. (An index
# expression runs with a bare search_path: the function calls no other of this schema.)
MEMORY_TEAM_TEXT = """
CREATE FUNCTION memory_team_text(team uuid, words tsvector) RETURNS tsvector
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT array_to_tsvector(ARRAY['team ' || team::text]) || words
$$"""

TEAM_TEXT_INDEX = (
    "CREATE INDEX idx_memory_team_text ON memory USING gin (memory_team_text(team_id, search_text))"
)
PINNED_INDEX = "CREATE INDEX idx_memory_team_pinned ON memory (team_id, id) WHERE is_pinned"

RETRIEVABLE = retrieval.RETRIEVABLE

# The query's words that memory m holds, in its own configuration (the agent's: `own`
# words) or another (the query's plain words), each counting its inverse document frequency.
LEXICAL_SCORE = """(
            SELECT coalesce(sum(w.idf), 0)
            FROM unnest(word_own, word_query, word_idf) AS w (own, query, idf)
            WHERE w.own = (m.text_config = config) AND m.search_text @@ w.query
        )"""

# Memory m holds one of the query's words that find candidates (`finding`): in a small team
# its memories are read in the team's key order (a few hundred rows cost less than merging
# the words' entries of every team in the index), in a large one found by the team's word.
HOLDS = "m.search_text @@ finding"
FINDS = "memory_team_text(m.team_id, m.search_text) @@ (team_word && finding)"


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


# How many retrievable memories of the team in `word_own`'s configuration hold each word:
# the memories holding any (`finding`) read once, each word counted among them.
WORD_COUNTS = f"""
        WITH matched AS MATERIALIZED (
            SELECT m.text_config = config AS own, m.search_text
            FROM memory AS m
            WHERE {HOLDS} AND {RETRIEVABLE}
        )
        SELECT array_agg(
                   (SELECT count(*) FROM matched AS x
                    WHERE x.own = w.own AND x.search_text @@ w.query)::float8
                   ORDER BY w.i)
        FROM unnest(word_own, word_query) WITH ORDINALITY AS w (own, query, i)"""

RETRIEVE_MEMORIES = f"""
{retrieval.RETRIEVE_SIGNATURE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")}
#variable_conflict use_column
DECLARE
    config regconfig := coalesce(
        (SELECT text_search_config(a.personality ->> 'language') FROM agent AS a
         WHERE a.team_id = team AND a.id = agent),
        'simple');
    -- The word naming the team, as memory_team_text adds it to the team's memories.
    team_word tsquery := lexeme_query((tsvector_to_array(memory_team_text(team, '')))[1]);
    -- The query's words: each matched in memories of the agent's configuration (own) or
    -- of another (plain), its query, its document frequency and its rarity (idf).
    word_own boolean[];
    word_lexeme text[];
    word_query tsquery[];
    word_held float8[];
    word_idf float8[];
    finding tsquery;  -- the words that find lexical candidates, OR'ed
    sampled float8[];
    indexed float8;
    total float8;
    rows_found float8 := 0;
    word integer;
    lexical_ids uuid[];  -- the lexical candidates, best first
    held float8;
    types memory_type_enum[];  -- NULL: every type, as RETRIEVABLE reads it
BEGIN
    at := coalesce(at, now());
{retrieval.WEIGHTS}

    SELECT array_agg(w.own ORDER BY w.own DESC, w.lexeme),
           array_agg(w.lexeme ORDER BY w.own DESC, w.lexeme),
           array_agg(lexeme_query(w.lexeme) ORDER BY w.own DESC, w.lexeme)
    INTO word_own, word_lexeme, word_query
    FROM (
        SELECT true AS own, l.lexeme
        FROM unnest(tsvector_to_array(to_tsvector(config, coalesce(query_text, ''))))
             AS l (lexeme)
        UNION
        SELECT false, l.lexeme
        FROM unnest(tsvector_to_array(to_tsvector('simple', coalesce(query_text, ''))))
             AS l (lexeme)
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
        IF total IS NOT NULL AND total <= {LEXICAL_EXACT_MAX_ROWS} THEN
            finding := (SELECT string_agg(q::text, ' | ')::tsquery FROM unnest(word_query) AS q);
            {WORD_COUNTS} INTO word_held;
        ELSE
            IF indexed IS NULL THEN
                SELECT count(*) INTO total FROM memory AS m WHERE {RETRIEVABLE};
            ELSE
                total := greatest(indexed, {LEXICAL_EXACT_MAX_ROWS} + 1);
            END IF;
            -- A word's share of the sample, and its count (past the sample) if it is rare,
            -- in memories of any configuration: the index finds them all.
            WITH sample AS MATERIALIZED (
                SELECT m.search_text FROM memory AS m
                WHERE m.team_id = team AND m.status = 'active'
                ORDER BY m.id
                LIMIT {WORD_SAMPLE_ROWS}
            )
            , shares AS (
                SELECT d.lexeme,
                       (SELECT count(*) FROM sample AS x
                        WHERE x.search_text @@ lexeme_query(d.lexeme))::float8
                       / greatest((SELECT count(*) FROM sample), 1) AS share
                FROM (SELECT DISTINCT unnest(word_lexeme) AS lexeme) AS d
            )
            SELECT array_agg(h.share ORDER BY w.i)
            INTO sampled
            FROM unnest(word_lexeme) WITH ORDINALITY AS w (lexeme, i)
            JOIN shares AS h ON h.lexeme = w.lexeme;
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

    RETURN QUERY
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
{retrieval.FUSION}
    ), extra AS (
        SELECT m.id, 1 - (m.embedding <=> query) AS similarity, {LEXICAL_SCORE} AS lexical
        FROM memory AS m
        WHERE {RETRIEVABLE}
          AND m.id NOT IN (SELECT p.id FROM pool AS p)
          AND m.id = ANY (ARRAY(
              SELECT unnest(s.links) FROM strongest AS s
              UNION ALL
              SELECT k.id FROM memory AS k WHERE k.team_id = team AND k.is_pinned))
{retrieval.SCORING}
END
$$"""


def upgrade() -> None:
    op.execute("DROP FUNCTION memory_text_query(regconfig, text)")
    op.execute(LEXEME_QUERY)
    op.execute(MEMORY_TEAM_TEXT)
    op.execute("DROP INDEX idx_memory_search_text")
    op.execute(TEAM_TEXT_INDEX)
    op.execute(PINNED_INDEX)
    op.execute(RETRIEVE_MEMORIES)


def downgrade() -> None:
    op.execute(retrieval.RETRIEVE_MEMORIES.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("DROP INDEX idx_memory_team_pinned")
    op.execute("DROP INDEX idx_memory_team_text")
    op.execute("CREATE INDEX idx_memory_search_text ON memory USING gin (search_text)")
    op.execute("DROP FUNCTION memory_team_text(uuid, tsvector)")
    op.execute("DROP FUNCTION lexeme_query(text)")
    op.execute(retrieval.MEMORY_TEXT_QUERY)
