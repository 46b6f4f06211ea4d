"""A crowded query is known before the HNSW index is walked for it, and reads fewer IVF lists.

Since 0016 a large team's search learnt that a query was crowded (its nearest memories
hardly nearer than a typical one) only from the hits of its HNSW pass, so a crowded query
paid that pass (3.1 ms at 25,000 memories of 1,536 dimensions, most of the 8.7 ms it spent
beyond its IVF pass) before the IVF pass that answers it.

The search now first takes a short walk of the team's HNSW index (`ef_search` 10, no
iterative scan, about 0.85 ms at 25,000 memories): the farthest of the ten memories it finds
is no nearer than the team's true tenth nearest; if the sample's typical memory is not
`INDEX_MIN_CONTRAST` times as far as that one, the query may be crowded, and it goes
straight to the IVF pass (path `wide`). On
the benchmark's memories the walk told the two classes apart with room to spare: the typical
memory 2.0-2.2 times as far as the walk's tenth for own-topic queries, 1.04-1.09 times for
crowded ones (`INDEX_MIN_CONTRAST` is 1.15). Queries it lets through take the HNSW pass and
its own check as before. A query it misjudges as crowded is answered by the IVF pass, only
slower; one it lets through is still checked on the HNSW pass's hits. A team whose IVF index
is not built yet answers a crowded query by its exact scan (path `fallback`), as before.

An unfiltered crowded query reads at least `WIDE_MIN_PROBES` lists, 40 (was 64): every list
of a team of up to 5,000 memories, and `ceil(3 * sqrt(lists))` above that. On 25,000
memories (200 lists), reading 43 lists instead of 64 took the bare IVF query from 9.6 to
7.2 ms with recall@10 0.988 instead of 0.997 (40 crowded queries, measured alone). A filtered
search (an agent, a person, memory types) reads as many lists as before: a filter leaves
fewer candidates in each list, and the tests' filtered crowded queries found only 0.70-0.88
of their nearest reading 43 of 197 lists, 0.96-1.00 reading 64. Teams of 250,000 read as
many lists as before (128 of 1,805).

Measured on 25,000 memories alone (60 queries of each class, the function called by asyncpg,
two runs each way): own-topic p50 3.0-3.4 ms (3.2-3.5 before), crowded 10.3-10.9 ms
(16.6-16.7 before), recall@10 0.997 and 0.983 (0.997 and 0.993 before).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

crowded = importlib.import_module("skill_store._migrations.versions.0016_crowded_search")

WIDE_MIN_PROBES = 40
"""Fewest lists a crowded query reads (all of them in a team of up to 5,000 memories)."""
FILTERED_WIDE_MIN_PROBES = crowded.WIDE_MIN_PROBES
"""Fewest lists a crowded query reads with a filter (an agent, a person, memory types)."""
WALKED_ROWS = 10
"""The memories the short walk finds, whose farthest is held against a typical one."""

# The farthest of the `WALKED_ROWS` memories a short walk of the team's HNSW index finds
# nearest the query: the index's own predicate, no other filter, since the check is of the
# team's memories as a whole.
SHORT_WALK = f"""
SELECT max(p.distance) FROM (
    SELECT m.embedding <=> $1 AS distance
    FROM memory AS m
    WHERE memory_team_key(m.team_id) = memory_team_key($2) AND m.status = 'active'
      AND coalesce(m.load_batch, 0) <= $3 AND m.team_id = $2
    ORDER BY {crowded.HNSW_ORDER}
    LIMIT {WALKED_ROWS}
) AS p"""

TYPICAL = f"""
        SELECT avg(s.distance) INTO typical
        FROM (
            SELECT m.embedding <=> query AS distance
            FROM memory AS m
            WHERE m.team_id = team AND m.status = 'active' AND m.embedding IS NOT NULL
            ORDER BY uuid_hash_extended(m.id, 0)
            LIMIT {crowded.CONTRAST_SAMPLE_ROWS}
        ) AS s;"""

# 0016's search from its HNSW pass to its fallback, taken out whole.
HNSW_PASS_START = "    IF chosen = 'index' THEN\n"
FALLBACK_START = "        chosen := 'fallback';\n    END IF;\n"


def index_pass(order: str) -> str:
    """One pass over the team's indexes in `order` (an index's), into `ids` and `distances`,
    then `within`: how many of them are within `min_similarity`."""
    return f"""
        EXECUTE format(
            $pass${crowded.INDEX_PASS}$pass$,
            dimensions, format('{order}', dimensions))
        INTO ids, distances
        USING query, team, covers, depth, agent, person, types, min_similarity;
        within := cardinality(ids);
        WHILE within > 0 AND distances[within] > coalesce(max_distance, 'infinity') LOOP
            within := within - 1;
        END LOOP;"""


# The index paths: the short walk, then the HNSW pass and its check, or the IVF pass, then
# the hits of whichever pass answered.
INDEX_PATHS = f"""
    IF chosen = 'index' THEN{TYPICAL}
        -- Crowded: even the team's true tenth nearest would be hardly nearer than a typical
        -- memory, since the walk's tenth is no nearer than it.
        PERFORM set_config('hnsw.ef_search', '{WALKED_ROWS}', true);
        PERFORM set_config('hnsw.iterative_scan', 'off', true);
        EXECUTE format($walk${SHORT_WALK}$walk$, dimensions) INTO nearest
        USING query, team, covers;
        PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
        IF typical < {crowded.INDEX_MIN_CONTRAST} * nearest THEN
            chosen := CASE WHEN lists IS NOT NULL THEN 'wide' ELSE 'fallback' END;
        END IF;
    END IF;

    IF chosen = 'index' THEN
        PERFORM set_config('hnsw.ef_search', least(greatest(100, depth), 1000)::text, true);
        -- The scan stops at the first row beyond `min_similarity`.{index_pass(crowded.HNSW_ORDER)}
        IF within = 0 AND cardinality(ids) > 0 THEN
            trusted := true;
        ELSIF cardinality(ids) = depth OR within < cardinality(ids) THEN
            -- Not trusted if the query is crowded: its tenth hit hardly nearer than a
            -- typical memory.
            trusted := typical >= {crowded.INDEX_MIN_CONTRAST} * distances[least(within, 10)];
        END IF;
        -- Else the scan was cut short (by hnsw.max_scan_tuples or work_mem).
        IF NOT trusted THEN
            chosen := CASE WHEN lists IS NOT NULL THEN 'wide' ELSE 'fallback' END;
        END IF;
    END IF;

    IF chosen = 'wide' THEN
        -- The IVF index; more lists (up to every one) while the filters leave too few. A
        -- filter leaves fewer candidates in each list read, so a filtered search reads more.
        PERFORM set_config(
            'ivfflat.probes',
            least(lists, greatest(
                CASE WHEN agent IS NULL AND person IS NULL AND types IS NULL
                     THEN {WIDE_MIN_PROBES} ELSE {FILTERED_WIDE_MIN_PROBES} END,
                ceil(3 * sqrt(lists))))::text,
            true);{index_pass(crowded.IVF_ORDER)}
    END IF;

    IF chosen IN ('index', 'wide') THEN
        RETURN QUERY
        SELECT h.id, 1 - h.distance, chosen
        FROM unnest(ids[1:least(within, lim)], distances[1:least(within, lim)])
             AS h (id, distance)
        ORDER BY h.distance, h.id;
        RETURN;
    END IF;
"""


def search_memories() -> str:
    """0016's `search_memories` with `INDEX_PATHS` in place of its index paths."""
    head, found, rest = crowded.SEARCH_MEMORIES.partition(HNSW_PASS_START)
    assert found, "0016's HNSW pass not found"
    _, found, tail = rest.partition(FALLBACK_START)
    assert found, "0016's fallback not found"
    declared = "    typical double precision;\n"
    assert declared in head
    head = head.replace(
        declared, declared + "    nearest double precision;  -- the short walk's tenth\n"
    )
    return head + INDEX_PATHS.lstrip("\n") + tail


def upgrade() -> None:
    op.execute(search_memories())


def downgrade() -> None:
    op.execute(crowded.SEARCH_MEMORIES)
