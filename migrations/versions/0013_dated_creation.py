"""The audit row of a memory's creation is dated by the memory's `created_at`.

A memory imported or backfilled with a past `created_at` was logged as created when it was
written, so its history and `content_at` disagreed with the memory itself. The `created`
row now carries the earlier of the two moments; changes keep the time they were made
(`clock_timestamp()`). A creation is a memory's first event, so no later change can come
before it.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

tenancy = importlib.import_module("skill_store._migrations.versions.0004_tenancy")
audit = importlib.import_module("skill_store._migrations.versions.0009_audit_and_members")


def upgrade() -> None:
    op.execute(
        audit.log_memory_change(tenancy.current_schema()).replace(
            "NEW.source_conversation_id, logged_at);",
            "NEW.source_conversation_id, least(logged_at, NEW.created_at));",
        )
    )


def downgrade() -> None:
    op.execute(audit.log_memory_change(tenancy.current_schema()))
