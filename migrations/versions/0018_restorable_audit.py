"""Memory's triggers survive `pg_dump` and `pg_restore`.

The trigger that logs updates of `memory` compared each column of the old and the new row
with `IS DISTINCT FROM`; for `embedding`, that is pgvector's `=`, an operator of the schema
`public`. `pg_dump` writes the comparison without a schema (SQL's `IS DISTINCT FROM` has no
place for one) and a restore runs with an empty `search_path`, so PostgreSQL did not find the
operator: `pg_restore` left the trigger out, and the restored store's updates went unaudited.
The embeddings are now compared as `real[]`, whose operators are PostgreSQL's own; so does the
trigger that an embedder migration in progress keeps on `memory` (made by
`begin_memory_embedder_migration`, made again here if one is in progress).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

audit = importlib.import_module("skill_store._migrations.versions.0009_audit_and_members")
retrieval = importlib.import_module("skill_store._migrations.versions.0010_retrieval")
memory_embedder = importlib.import_module("skill_store._migrations.versions.0011_memory_embedder")
embedder_migration = importlib.import_module(
    "skill_store._migrations.versions.0017_embedder_migration"
)

LOGGED_COLUMNS = (*memory_embedder.LOGGED_COLUMNS, "embedding_model")
"""The columns whose change the audit of updates logs, since 0011."""

VECTORS_COMPARED = "OLD.embedding IS DISTINCT FROM NEW.embedding"
VECTORS_COMPARED_AS_ARRAYS = "OLD.embedding::real[] IS DISTINCT FROM NEW.embedding::real[]"
COMPARED = tuple(
    "embedding::real[]" if column == "embedding" else column for column in LOGGED_COLUMNS
)
"""`LOGGED_COLUMNS` as the audit's condition compares them, the embedding as `real[]`."""


def begin_embedder_migration(compared: str) -> str:
    """0017's `begin_memory_embedder_migration`, its trigger comparing vectors by `compared`."""
    definition = embedder_migration.BEGIN.replace(
        "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
    )
    assert VECTORS_COMPARED in definition
    return definition.replace(VECTORS_COMPARED, compared)


# An embedder migration in progress keeps its trigger; made again by its new definition.
REMAKE_EMBEDDING_NEXT_TRIGGER = """
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'memory'::regclass
               AND tgname = 'trg_memory_embedding_next') THEN
        DROP TRIGGER trg_memory_embedding_next ON memory;
        CREATE TRIGGER trg_memory_embedding_next
            BEFORE UPDATE OF content, embedding ON memory
            FOR EACH ROW
            WHEN (OLD.content IS DISTINCT FROM NEW.content OR {compared})
            EXECUTE FUNCTION trigger_clear_memory_embedding_next();
    END IF;
END
$$"""


def upgrade() -> None:
    op.execute("DROP TRIGGER trg_memory_log_update ON memory")
    op.execute(audit.log_update_trigger(audit.changed(COMPARED)))
    op.execute(begin_embedder_migration(VECTORS_COMPARED_AS_ARRAYS))
    op.execute(REMAKE_EMBEDDING_NEXT_TRIGGER.format(compared=VECTORS_COMPARED_AS_ARRAYS))


def downgrade() -> None:
    op.execute(REMAKE_EMBEDDING_NEXT_TRIGGER.format(compared=VECTORS_COMPARED))
    op.execute(begin_embedder_migration(VECTORS_COMPARED))
    retrieval.audited(LOGGED_COLUMNS)
