"""A large team's HNSW hits are checked against the IVF lists nearest the query.

Since 0016 the hits of a team's HNSW pass were trusted unless the query was crowded: unless
its tenth hit was less than `INDEX_MIN_CONTRAST` (1.15) times nearer than a typical memory of
the team. That bound was measured at 1,536 dimensions, where a crowded query's tenth nearest
is at most 1.13 times nearer than typical. At fewer dimensions distances spread more: on the
benchmark's memories (teams of 10,000 in some twenty topics, queries about other topics) the
true tenth nearest of such a query was 1.13-1.27 times nearer than typical at 384 dimensions
and 1.16-1.45 times at 128, so most of them passed the check, and the walk, which goes down
into one of the topics the query lies between, missed many of their nearest. At 1,536
dimensions the same happens to queries about a team's own topics once the team is large: on
250,000 memories in 250 topics, the walks of 40 such queries found 0.963 of their nearest.

Now, when the HNSW pass would be trusted, the `CHECK_PROBES` lists of the team's IVF index
nearest the query are read as well (the same filters, no iterative scan) for memories the
walk missed: among the IVF order's first `lim`, those not among the hits and nearer than the
last hit (or within `min_similarity` when there are fewer hits than asked), their exact
distance read from TOAST. A few join the hits (path `index`); more than half as many as
asked show the walk gone astray, and the IVF pass answers (path `wide`). A team whose IVF
index is not built yet keeps its HNSW hits as before.

Measured with 0019's function and this one in turns on the same indexes (the function called
by asyncpg; 80 queries from other teams' memories and 40 from the team's own, on two teams of
10,000 memories): at 128 dimensions recall@10 0.604 (worst 0.0) became 0.980 (worst 0.8), 24
of 80 queries sent to the IVF pass, p50 2.4 -> 4.4 ms; at 384, 0.931 (worst 0.0) became 0.993
(worst 0.9); own-topic queries kept 1.000 at a p50 0.3-1.1 ms higher. On 250,000 memories of
1,536 dimensions, own-topic queries went from 0.963 (worst 0.8) to 1.000, p50 4.9 -> 10.3 ms.
8 lists instead of 16 gave 0.924 and 0.982 at 128 and 384 dimensions, 4 lists 0.838 and
0.961.

`ivfflat.probes` joins the settings the function restores when it returns: since 0016 a
search through the IVF index left its value to the rest of the caller's transaction.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

crowded = importlib.import_module("skill_store._migrations.versions.0016_crowded_search")
walk = importlib.import_module("skill_store._migrations.versions.0019_crowded_first")

CHECK_PROBES = 16
"""The lists of a team's IVF index nearest the query read to check the HNSW pass's hits."""

# After the HNSW pass and its contrast check, before its verdict is acted on.
VERDICT = "        -- Else the scan was cut short (by hnsw.max_scan_tuples or work_mem).\n"

# Of the `lim` ($4) retrievable memories of the team's IVF index nearest the query ($1), in
# its order %2$s, those that are not among the hits ($8) and nearer than `bound` ($9), or as
# near when `$10`: the memories the HNSW walk missed, with their exact distances, nearest
# first. Only their vectors are read from TOAST.
CHECK_PASS = f"""
SELECT coalesce(array_agg(c.id ORDER BY c.distance, c.id), '{{}}'),
       coalesce(array_agg(c.distance ORDER BY c.distance, c.id), '{{}}')
FROM (
    SELECT n.id, n.embedding <=> $1 AS distance
    FROM (
        SELECT m.id, m.embedding FROM memory AS m
        WHERE memory_team_key(m.team_id) = memory_team_key($2) AND m.status = 'active'
          AND coalesce(m.load_batch, 0) <= $3 AND {crowded.RETRIEVABLE_BY_PARAMETERS}
        ORDER BY %2$s
        LIMIT $4
    ) AS n
    WHERE n.id <> ALL ($8)
) AS c
WHERE CASE WHEN $10 THEN c.distance <= $9 ELSE c.distance < $9 END"""

CHECK = f"""        -- The lists of the IVF index nearest the query, read for the memories the walk
        -- missed: nearer than the last hit, or within min_similarity when there are fewer
        -- hits than asked. A few join the hits; more than half as many as asked show the
        -- walk gone astray, and the IVF pass answers.
        IF trusted AND lists IS NOT NULL THEN
            PERFORM set_config('ivfflat.probes', least(lists, {CHECK_PROBES})::text, true);
            PERFORM set_config('ivfflat.iterative_scan', 'off', true);
            EXECUTE format(
                $check${CHECK_PASS}$check$,
                dimensions, format('{crowded.IVF_ORDER}', dimensions))
            INTO missed_ids, missed_distances
            USING query, team, covers, lim, agent, person, types, ids[1:least(within, lim)],
                  CASE WHEN within >= lim THEN distances[lim]
                       ELSE coalesce(max_distance, 'infinity') END,
                  within < lim;
            PERFORM set_config('ivfflat.iterative_scan', 'relaxed_order', true);
            IF 2 * cardinality(missed_ids) > lim THEN
                trusted := false;
            ELSIF cardinality(missed_ids) > 0 THEN
                SELECT array_agg(h.id ORDER BY h.distance, h.id),
                       array_agg(h.distance ORDER BY h.distance, h.id)
                INTO ids, distances
                FROM (SELECT * FROM unnest(ids[1:within], distances[1:within])
                      UNION ALL
                      SELECT * FROM unnest(missed_ids, missed_distances)) AS h (id, distance);
                within := cardinality(ids);
            END IF;
        END IF;
"""

SHORT_SCAN = " or that scan fell short: the team''s own IVF index)"
COMMENT = crowded.COMMENT.replace(
    SHORT_SCAN,
    " that scan fell short, or it missed more than half as many memories as asked that the"
    " team''s IVF lists nearest the query hold, which join its hits when fewer: the team''s"
    " own IVF index)",
)


def search_memories() -> str:
    """0019's `search_memories` with `CHECK` before the HNSW pass's verdict, and
    `ivfflat.probes` among the settings restored when it returns (it was left to the
    caller's transaction)."""
    head, found, tail = walk.search_memories().partition(VERDICT)
    assert found, "0019's verdict on the HNSW pass not found"
    declared = "    nearest double precision;  -- the short walk's tenth\n"
    assert declared in head
    head = head.replace(
        declared,
        declared
        + "    missed_ids uuid[];  -- memories the walk missed, found in the IVF lists\n"
        + "    missed_distances double precision[];\n",
    )
    settings = "SET ivfflat.iterative_scan = relaxed_order\n"
    assert settings in head
    head = head.replace(settings, settings + "SET ivfflat.probes = 1\n")
    return head + CHECK + found + tail


def upgrade() -> None:
    assert SHORT_SCAN in crowded.COMMENT, "0016's comment on the wide path not found"
    op.execute(search_memories())
    op.execute(f"COMMENT ON FUNCTION {crowded.search.SIGNATURE} IS '{COMMENT}'")


def downgrade() -> None:
    op.execute(walk.search_memories())
    op.execute(f"COMMENT ON FUNCTION {crowded.search.SIGNATURE} IS '{crowded.COMMENT}'")
