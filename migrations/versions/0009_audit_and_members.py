"""An audit trail no role can switch off, stamped at the time of each change; members by admins.

- Access bookkeeping was kept out of `memory_log` by a transaction-local flag that any role
  could set (`set_config('skill_store.recording_access', 'on', true)`), and then change a
  memory's content with no log row. Now an update is logged unless the only columns it
  changed are `access_count`, `last_accessed_at` and `updated_at`: there is no flag.
- Log rows carried the time their transaction began (`now()`), so `content_at` showed a
  change before it was made when its transaction had begun earlier. They now carry the time
  of the change (`clock_timestamp()`).
- The team role could add any user to its team, even as owner, and then read that user's
  email; adding members and changing their roles is for the application's own role.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-25
"""

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

foundation = importlib.import_module("skill_store._migrations.versions.0001_foundation")
tenancy = importlib.import_module("skill_store._migrations.versions.0004_tenancy")
team_keys = importlib.import_module("skill_store._migrations.versions.0005_team_keys")

ACCESS_COLUMNS = ("access_count", "last_accessed_at", "updated_at")
"""What an access bump changes; an update that changes nothing else is not logged."""

LOGGED_COLUMNS = (
    "id",
    "team_id",
    "agent_id",
    "user_id",
    "memory_type",
    "content",
    "subject",
    "embedding",
    "importance",
    "confidence",
    "is_pinned",
    "source_type",
    "source_conversation_id",
    "source_message_ids",
    "extraction_model",
    "contradicts",
    "related_to",
    "metadata",
    "tier",
    "expires_at",
    "version",
    "superseded_by",
    "status",
    "created_at",
)
"""Every other column of `memory` (a test checks that the two lists cover the table)."""


def changed(columns: Sequence[str]) -> str:
    old = ", ".join(f"OLD.{column}" for column in columns)
    new = ", ".join(f"NEW.{column}" for column in columns)
    return f"ROW({old}) IS DISTINCT FROM ROW({new})"


def log_update_trigger(condition: str) -> str:
    return (
        "CREATE TRIGGER trg_memory_log_update AFTER UPDATE ON memory FOR EACH ROW"
        f" WHEN ({condition}) EXECUTE FUNCTION trigger_log_memory_change()"
    )


def without_flag(definition: str) -> str:
    """An access function as before, without setting the flag."""
    lines = [line for line in definition.splitlines() if "recording_access" not in line]
    return "\n".join(lines).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


ACCESS_FUNCTIONS = {
    "update_memory_access(uuid[])": foundation.FUNCTIONS["update_memory_access(uuid[])"],
    "update_memory_access(uuid, uuid[])": team_keys.TEAM_FUNCTIONS[
        "update_memory_access(uuid, uuid[])"
    ],
}


def log_memory_change(schema: str) -> str:
    """The audit trigger function of 0004, its rows dated by the time of the change."""
    return tenancy.LOG_MEMORY_CHANGE.format(schema=schema).replace(
        "GREATEST(now(),", "GREATEST(clock_timestamp(),"
    )


def upgrade() -> None:
    schema = tenancy.current_schema()
    op.execute("DROP TRIGGER trg_memory_log_update ON memory")
    op.execute(log_update_trigger(changed(LOGGED_COLUMNS)))
    for definition in ACCESS_FUNCTIONS.values():
        op.execute(without_flag(definition))
    op.execute(log_memory_change(schema))
    op.execute(f"REVOKE INSERT, UPDATE ON team_membership FROM {tenancy.ROLE}")


def downgrade() -> None:
    schema = tenancy.current_schema()
    op.execute(f"GRANT INSERT, UPDATE ON team_membership TO {tenancy.ROLE}")
    op.execute(tenancy.LOG_MEMORY_CHANGE.format(schema=schema))
    for definition in ACCESS_FUNCTIONS.values():
        op.execute(definition.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
    op.execute("DROP TRIGGER trg_memory_log_update ON memory")
    op.execute(
        log_update_trigger(
            "current_setting('skill_store.recording_access', true) IS DISTINCT FROM 'on'"
        )
    )
