"""A conversation's token totals are `bigint`.

As `integer`, once a conversation's totals reached 2^31 - 1 every later message failed
("integer out of range") in the trigger that adds its tokens. The generated `token_count`
depends on them, so it is dropped and added again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def retype(sql_type: str) -> None:
    op.execute("ALTER TABLE conversation DROP COLUMN token_count")
    op.execute(
        f"ALTER TABLE conversation ALTER COLUMN total_input_tokens TYPE {sql_type},"
        f" ALTER COLUMN total_output_tokens TYPE {sql_type}"
    )
    op.execute(
        f"ALTER TABLE conversation ADD COLUMN token_count {sql_type} NOT NULL"
        " GENERATED ALWAYS AS (total_input_tokens + total_output_tokens) STORED"
    )


def upgrade() -> None:
    retype("bigint")


def downgrade() -> None:
    retype("integer")
