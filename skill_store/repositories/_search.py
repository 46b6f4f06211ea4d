"""The statements of memory search and retrieval, built once: the SQL functions' calls."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlmodel import col, func, select

from skill_store.models import Memory, MemoryRead, MemorySignals
from skill_store.models._types import Vector

EMBEDDING_COLUMN = (
    select(sa.column("atttypmod", sa.Integer).label("dimensions"))
    .select_from(sa.table("pg_attribute"))
    .where(
        sa.column("attrelid") == sa.text("'memory'::regclass"),
        sa.column("attname") == "embedding",
    )
)
"""The dimension of `memory.embedding`: one row, one column."""

READ_FIELDS = tuple(MemoryRead.model_fields)
"""The names of a memory's fields in a hit, in the order the statements select them."""

# Columns, not the `Memory` entity: a hit is built from its row's values, with neither the
# ORM's loading nor an instance in the session for each (about a fifth of a small team's
# search, see BENCHMARKS.md).
_READ_COLUMNS = tuple(sa.inspect(Memory).columns[name] for name in READ_FIELDS)

_MEMORY_TYPES = postgresql.ARRAY(sa.inspect(Memory).columns["memory_type"].type)

EMBEDDING_MODELS = select(
    func.memory_embedding_models(
        sa.bindparam("team_id", type_=sa.Uuid),
        sa.bindparam("agent_id", type_=sa.Uuid),
        sa.bindparam("user_id", type_=sa.Uuid),
        sa.bindparam("memory_types", type_=_MEMORY_TYPES),
    )
)
"""The first and last (by name) of the models that made the vectors a search with these
filters may return, None for none known: one row, an array of two."""


def search_statement() -> Any:
    """Rows of (column dimension, *memory fields, similarity, path): `search_memories`' hits.

    Built once; its parameters are bound at each execution. The memory's fields are
    `READ_FIELDS`. The column's dimension comes first in every row, and is the only value
    not None when there is no hit. A query of another dimension is not passed to the
    function (which would raise, aborting the caller's transaction): the repository raises
    instead.
    """
    column = EMBEDDING_COLUMN.subquery("embedding_column")
    query = sa.cast(sa.bindparam("query", type_=Vector()), Vector())
    team = sa.bindparam("team_id", type_=sa.Uuid)
    hits = (
        func.search_memories(
            sa.case((func.vector_dims(query) == column.c.dimensions, query)),
            team,
            sa.bindparam("agent_id", type_=sa.Uuid),
            sa.bindparam("user_id", type_=sa.Uuid),
            sa.bindparam("memory_types", type_=_MEMORY_TYPES),
            sa.bindparam("limit", type_=sa.Integer),
            sa.bindparam("min_similarity", type_=sa.Float),
            sa.bindparam("exact_max_rows", type_=sa.Integer),
        )
        .table_valued(
            sa.column("id", sa.Uuid), sa.column("similarity", sa.Float), sa.column("path", sa.Text)
        )
        .lateral("hit")
    )
    return (
        sa.select(column.c.dimensions, *_READ_COLUMNS, hits.c.similarity, hits.c.path)
        .select_from(column)
        .outerjoin(hits, sa.true())
        .outerjoin(Memory, sa.and_(col(Memory.team_id) == team, col(Memory.id) == hits.c.id))
        .order_by(hits.c.similarity.desc(), hits.c.id)
    )


SEARCH = search_statement()

SIGNALS = tuple(MemorySignals.model_fields)


def retrieve_statement() -> Any:
    """Rows of (column dimension, *memory fields, similarity, score, five signals) by rank.

    The similarity is the cosine similarity of the memory's vector to the query, as
    `search_memories` gives it (None for a memory without a vector). As `search_statement`:
    the column's dimension comes first in every row, and is the only row when nothing is
    found; a query of another dimension is not passed to the function nor compared (nor is
    an access recorded): the repository raises instead.
    """
    column = EMBEDDING_COLUMN.subquery("embedding_column")
    query = sa.cast(sa.bindparam("query", type_=Vector()), Vector())
    team = sa.bindparam("team_id", type_=sa.Uuid)
    fits = func.vector_dims(query) == column.c.dimensions
    fitting = sa.case((fits, query))
    hits = (
        func.retrieve_memories(
            fitting,
            sa.bindparam("query_text", type_=sa.Text),
            team,
            sa.bindparam("agent_id", type_=sa.Uuid),
            sa.bindparam("user_id", type_=sa.Uuid),
            sa.bindparam("conversation_id", type_=sa.Uuid),
            sa.bindparam("limit", type_=sa.Integer),
            sa.bindparam("depth", type_=sa.Integer),
            sa.bindparam("weights", type_=postgresql.ARRAY(sa.Float)),
            sa.bindparam("fallback_weights", type_=postgresql.ARRAY(sa.Float)),
            sa.bindparam("half_life", type_=sa.Float),
            sa.bindparam("now", type_=sa.DateTime(timezone=True)),
            sa.and_(sa.bindparam("record_access", type_=sa.Boolean), fits),
            sa.bindparam("exact_max_rows", type_=sa.Integer),
        )
        .table_valued(
            sa.column("id", sa.Uuid),
            sa.column("score", sa.Float),
            *(sa.column(name, sa.Float) for name in SIGNALS),
            with_ordinality="position",
        )
        .render_derived(name="hit")
        .lateral()
    )
    similarity = 1 - col(Memory.embedding).op("<=>", return_type=sa.Float)(fitting)
    return (
        sa.select(
            column.c.dimensions,
            *_READ_COLUMNS,
            similarity,
            hits.c.score,
            *(hits.c[name] for name in SIGNALS),
        )
        .select_from(column)
        .outerjoin(hits, sa.true())
        .outerjoin(Memory, sa.and_(col(Memory.team_id) == team, col(Memory.id) == hits.c.id))
        .order_by(hits.c.position)
    )


RETRIEVE = retrieve_statement()
