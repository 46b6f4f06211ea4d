"""The audit row of a memory's creation is dated by the memory's `created_at`.

A memory imported or backfilled with a `created_at` before its transaction was logged as
created when it was written, so its history and `content_at` disagreed with the memory
itself. Its `created` row now carries that `created_at`; every other row keeps the time of
its change (`clock_timestamp()`), and a memory's rows still come in order (after those of an
earlier memory of the same id).

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
            "SELECT GREATEST(clock_timestamp(),",
            "SELECT GREATEST(CASE WHEN TG_OP = 'INSERT' AND NEW.created_at < now()"
            " THEN NEW.created_at ELSE clock_timestamp() END,",
        )
    )


def downgrade() -> None:
    op.execute(audit.log_memory_change(tenancy.current_schema()))
