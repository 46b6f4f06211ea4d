"""The embedder of each memory's vector: `memory.embedding_model`.

- `memory.embedding_model`: the name of the model that made `embedding` (the embedder's
  `model`); NULL where it is not known, as for every memory written before this revision.
  The dimension needs no column: `embedding`'s type fixes it for every row.
- `idx_memory_embedder` on (team_id, embedding_model): which models made a team's
  vectors is read from the index, before a search with an embedder's query.
- The audit of updates logs a change of `embedding_model` too.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

audit = importlib.import_module("skill_store._migrations.versions.0009_audit_and_members")
retrieval = importlib.import_module("skill_store._migrations.versions.0010_retrieval")

LOGGED_COLUMNS = (*audit.LOGGED_COLUMNS, "text_config")
"""The columns whose change 0010's audit of updates logs."""


def upgrade() -> None:
    op.execute("ALTER TABLE memory ADD COLUMN embedding_model text")
    op.execute("CREATE INDEX idx_memory_embedder ON memory USING btree (team_id, embedding_model)")
    retrieval.audited((*LOGGED_COLUMNS, "embedding_model"))


def downgrade() -> None:
    retrieval.audited(LOGGED_COLUMNS)
    op.execute("DROP INDEX idx_memory_embedder")
    op.execute("ALTER TABLE memory DROP COLUMN embedding_model")
