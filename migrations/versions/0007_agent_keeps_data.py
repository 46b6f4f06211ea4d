"""Deleting an agent no longer deletes its memories and conversations.

An agent's memories and conversations referenced it with ON DELETE CASCADE: one DELETE of an
agent erased them (and the conversations' messages) in silence. Now the database refuses to
delete an agent that still has any; `AgentRepository.delete(..., cascade=True)` deletes them
first when that is what the caller means. Archiving an agent (status `archived`) keeps them.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# name: table; each is (team_id, agent_id) -> agent (team_id, id)
AGENT_KEYS = {"fk_conversation_agent_team": "conversation", "fk_memory_agent_team": "memory"}


def replace(on_delete: str) -> None:
    for name, table in AGENT_KEYS.items():
        op.execute(
            f"ALTER TABLE {table} DROP CONSTRAINT {name},"
            f" ADD CONSTRAINT {name} FOREIGN KEY (team_id, agent_id)"
            f" REFERENCES agent (team_id, id){on_delete}"
        )


def upgrade() -> None:
    replace("")


def downgrade() -> None:
    replace(" ON DELETE CASCADE")
