"""A large team's HNSW hits are checked against a few lists of its IVF index before they count.

Since 0016 the hits of a team's HNSW pass were trusted unless the query was crowded: unless
its tenth hit was less than `INDEX_MIN_CONTRAST` (1.15) times nearer than a typical memory of
the team. That bound was measured at 1,536 dimensions, where a crowded query's tenth nearest
is at most 1.13 times nearer than typical. At fewer dimensions distances spread more: on the
benchmark's memories (teams of 10,000 in some twenty topics, queries about other topics) the
true tenth nearest of such a query was 1.13-1.27 times nearer than typical at 384 dimensions
and 1.16-1.45 times at 128, so most of them passed the check, and the walk, which goes down
into one of the topics the query lies between, found 0.55 (384) and 0.60-0.65 (128) of their ten
nearest, a fifth of them none. At 1,536 dimensions the same happens to queries about a
team's own topics once the team is large: on 250,000 memories in 250 topics, the walks of 40
such queries found 0.963 of their nearest, half of them missing one to three.

Now, when the HNSW pass would be trusted, the `CHECK_PROBES` lists of the team's IVF index
nearest the query are read as well (the same filters, no iterative scan), their hits
re-ranked by exact distance: if one of them is nearer than the search's last hit (or within
`min_similarity` when fewer hits than asked were found) and not among the hits, the walk
missed it, and the IVF pass answers (path `wide`). The check can only find a walk at fault,
never make one trusted; a team whose IVF index is not built yet keeps its HNSW hits as
before. Measured on the memories above: at 128 dimensions it sent 65 of the 66 queries
whose walk had found fewer than 95 % of their nearest to the IVF pass, and no query about
the team's own topics; at 384 dimensions `python -m bench` found 0.995 of crowded queries'
nearest (0.897 and 0.960 in two runs before); on 250,000 memories of 1,536 dimensions the own-topic
queries found all their nearest, half of them through the IVF pass, at a p50 of 14.5 ms
instead of 6.3 (the function called by asyncpg). The check reads the index's list centres
and `CHECK_PROBES` lists: BENCHMARKS.md has what it adds at each size.

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
"""The lists of a team's IVF index nearest the query that are read to check its HNSW hits."""

# After the HNSW pass and its contrast check, before its verdict is acted on.
VERDICT = "        -- Else the scan was cut short (by hnsw.max_scan_tuples or work_mem).\n"

CHECK = f"""        -- The hits stand if a few of the IVF index's lists nearest the query hold no
        -- memory the walk missed: one nearer than the last hit, or within min_similarity
        -- when there are fewer hits than asked.
        IF trusted AND lists IS NOT NULL THEN
            PERFORM set_config('ivfflat.probes', least(lists, {CHECK_PROBES})::text, true);
            PERFORM set_config('ivfflat.iterative_scan', 'off', true);
            EXECUTE format(
                $pass${crowded.INDEX_PASS}$pass$,
                dimensions, format('{crowded.IVF_ORDER}', dimensions))
            INTO checked_ids, checked_distances
            USING query, team, covers, depth, agent, person, types, min_similarity;
            PERFORM set_config('ivfflat.iterative_scan', 'relaxed_order', true);
            trusted := NOT EXISTS (
                SELECT FROM unnest(checked_ids, checked_distances) AS c (id, distance)
                WHERE c.id <> ALL (ids[1:least(within, lim)])
                  AND CASE WHEN within >= lim THEN c.distance < distances[lim]
                           ELSE c.distance <= coalesce(max_distance, 'infinity') END);
        END IF;
"""


SHORT_SCAN = " or that scan fell short: the team''s own IVF index)"
COMMENT = crowded.COMMENT.replace(
    SHORT_SCAN,
    " that scan fell short, or it missed a memory that a few lists of the team''s IVF index"
    " hold: the team''s own IVF index)",
)


def search_memories() -> str:
    """0019's `search_memories` with `CHECK` before the HNSW pass's verdict."""
    head, found, tail = walk.search_memories().partition(VERDICT)
    assert found, "0019's verdict on the HNSW pass not found"
    declared = "    nearest double precision;  -- the short walk's tenth\n"
    assert declared in head
    head = head.replace(
        declared,
        declared
        + "    checked_ids uuid[];  -- the IVF lists' hits that check the HNSW pass's\n"
        + "    checked_distances double precision[];\n",
    )
    return head + CHECK + found + tail


def upgrade() -> None:
    assert SHORT_SCAN in crowded.COMMENT, "0016's comment on the wide path not found"
    op.execute(search_memories())
    op.execute(f"COMMENT ON FUNCTION {crowded.search.SIGNATURE} IS '{COMMENT}'")


def downgrade() -> None:
    op.execute(walk.search_memories())
    op.execute(f"COMMENT ON FUNCTION {crowded.search.SIGNATURE} IS '{crowded.COMMENT}'")
