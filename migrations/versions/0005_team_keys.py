"""Team keys: every team's table is keyed by (team_id, id), so it can be distributed by team.

Citus (and native partitioning) need the distribution column in every primary key and unique
constraint, and foreign keys between distributed tables that include it. So:

- `message` and `memory_tag` gain `team_id` (copied from their conversation and memory);
  `memory_log.team_id` becomes NOT NULL (the rows still without one take their memory's team;
  the upgrade stops if some memory no longer exists to say it);
- the primary keys of the seven team tables become (team_id, id), and `uq_memory_tag`
  becomes (team_id, memory_id, tag);
- every foreign key between them is composite and includes team_id. A row can therefore only
  name rows of its own team: these foreign keys replace the same-team constraint triggers of
  0003 and keep their names, except `fk_conversation_user_team` (a conversation's user is a
  member of its team), which no foreign key expresses and which stays a trigger.
  `ON DELETE SET NULL (column)` clears only the reference, never the row's team_id.
- the row-level security policies of `message` and `memory_tag` compare their own team_id;
- the conversation-stats trigger finds conversations by (team_id, id), and
  `update_memory_access` and `reconstruct_memory_at` gain overloads that take the team first,
  so that every statement the repositories send names its team.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TEAM_TABLES = (
    "team_membership",
    "agent",
    "conversation",
    "message",
    "memory",
    "memory_log",
    "memory_tag",
)

# name: (table, columns, referenced table, referenced columns, ON DELETE action)
FOREIGN_KEYS = {
    "fk_conversation_agent_team": (
        "conversation",
        "team_id, agent_id",
        "agent",
        "team_id, id",
        "CASCADE",
    ),
    "fk_message_conversation_team": (
        "message",
        "team_id, conversation_id",
        "conversation",
        "team_id, id",
        "CASCADE",
    ),
    "fk_message_agent_team": (
        "message",
        "team_id, agent_id",
        "agent",
        "team_id, id",
        "SET NULL (agent_id)",
    ),
    "fk_memory_agent_team": ("memory", "team_id, agent_id", "agent", "team_id, id", "CASCADE"),
    "fk_memory_source_conversation_team": (
        "memory",
        "team_id, source_conversation_id",
        "conversation",
        "team_id, id",
        "SET NULL (source_conversation_id)",
    ),
    "fk_memory_superseded_by_team": (
        "memory",
        "team_id, superseded_by",
        "memory",
        "team_id, id",
        "NO ACTION",
    ),
    "fk_memory_tag_memory_team": (
        "memory_tag",
        "team_id, memory_id",
        "memory",
        "team_id, id",
        "CASCADE",
    ),
}

# The single-column foreign keys of 0001 that the composite ones replace, as 0001 made them.
OLD_FOREIGN_KEYS = {
    "fk_conversation_agent_id_agent": ("conversation", "agent_id", "agent", "id", "CASCADE"),
    "fk_message_conversation_id_conversation": (
        "message",
        "conversation_id",
        "conversation",
        "id",
        "CASCADE",
    ),
    "fk_message_agent_id_agent": ("message", "agent_id", "agent", "id", "SET NULL"),
    "fk_memory_agent_id_agent": ("memory", "agent_id", "agent", "id", "CASCADE"),
    "fk_memory_source_conversation_id_conversation": (
        "memory",
        "source_conversation_id",
        "conversation",
        "id",
        "SET NULL",
    ),
    "fk_memory_superseded_by_memory": ("memory", "superseded_by", "memory", "id", "NO ACTION"),
    "fk_memory_tag_memory_id_memory": ("memory_tag", "memory_id", "memory", "id", "CASCADE"),
}

# The same-team triggers of 0003 that the foreign keys make redundant, and their functions.
REPLACED_RULES = (
    "fk_memory_agent_team",
    "fk_memory_source_conversation_team",
    "fk_conversation_agent_team",
    "fk_message_agent_team",
    "fk_agent_team_move",
    "fk_conversation_team_move",
)

OWN_TEAM = "team_id = current_team_id()"

UPDATE_CONVERSATION_STATS = """
CREATE OR REPLACE FUNCTION trigger_update_conversation_stats() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM conversation
    WHERE (team_id, id) IN (SELECT team_id, conversation_id FROM new_messages)
    ORDER BY id
    FOR NO KEY UPDATE;

    UPDATE conversation AS c
    SET message_count = c.message_count + s.messages,
        last_message_at = GREATEST(c.last_message_at, s.last_at),
        total_input_tokens = c.total_input_tokens + s.input_tokens,
        total_output_tokens = c.total_output_tokens + s.output_tokens
    FROM (
        SELECT team_id,
               conversation_id,
               count(*) AS messages,
               max(created_at) AS last_at,
               coalesce(sum(token_count) FILTER (WHERE role <> 'assistant'), 0) AS input_tokens,
               coalesce(sum(token_count) FILTER (WHERE role = 'assistant'), 0) AS output_tokens
        FROM new_messages
        GROUP BY team_id, conversation_id
    ) AS s
    WHERE c.team_id = s.team_id AND c.id = s.conversation_id;
    RETURN NULL;
END
$$"""

# The team's overloads of 0001's functions: they reach only the rows of `team`.
TEAM_FUNCTIONS = {
    "update_memory_access(uuid, uuid[])": """
CREATE FUNCTION update_memory_access(team uuid, memory_ids uuid[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    touched integer;
BEGIN
    PERFORM set_config('skill_store.recording_access', 'on', true);
    WITH locked AS (
        SELECT id FROM memory WHERE team_id = team AND id = ANY(memory_ids) ORDER BY id FOR UPDATE
    )
    UPDATE memory AS m
    SET access_count = m.access_count + 1, last_accessed_at = now()
    FROM locked WHERE m.team_id = team AND m.id = locked.id;
    GET DIAGNOSTICS touched = ROW_COUNT;
    PERFORM set_config('skill_store.recording_access', '', true);
    RETURN touched;
END
$$""",
    "reconstruct_memory_at(uuid, uuid, timestamptz)": """
CREATE FUNCTION reconstruct_memory_at(team uuid, target_memory_id uuid, at timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN action = 'deleted' THEN NULL ELSE new_content END
    FROM memory_log
    WHERE team_id = team
      AND memory_id = target_memory_id
      AND created_at <= at
      AND (new_content IS NOT NULL OR action = 'deleted')
    ORDER BY created_at DESC
    LIMIT 1
$$""",
}

UNKNOWN_TEAMS = """
DO $$
DECLARE
    orphans bigint := (SELECT count(*) FROM memory_log WHERE team_id IS NULL);
BEGIN
    IF orphans > 0 THEN
        RAISE EXCEPTION '% memory_log rows have no team_id and their memory no longer exists,'
            ' so their team cannot be known', orphans
            USING HINT = 'Set their team_id (with trigger trg_memory_log_no_change disabled)'
                ' before upgrading; no row was changed.';
    END IF;
END
$$"""


# 0004's keys are ids alone: an id used in two teams (an export imported into another team
# keeps its ids) cannot go back.
SHARED_IDS = """
DO $$
DECLARE
    shared record;
BEGIN
    SELECT s.table_name, s.id, count(*) OVER () AS ids INTO shared
    FROM ({shared}) AS s
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '% ids are each used by rows of several teams (% %, for one), and the'
            ' keys of revision 0004 are ids alone', shared.ids, shared.table_name, shared.id
            USING HINT = 'Give those rows new ids, or delete the copies, before downgrading.';
    END IF;
END
$$"""


def rule_function(trigger: str) -> str:
    """The signature of the function a trigger definition of 0003 executes."""
    return trigger.rsplit(" ", 1)[-1]


def add_foreign_keys(keys: dict[str, tuple[str, str, str, str, str]]) -> None:
    for name, (table, columns, referenced, referenced_columns, on_delete) in keys.items():
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({columns})"
            f" REFERENCES {referenced} ({referenced_columns}) ON DELETE {on_delete}"
        )


def drop_foreign_keys(keys: dict[str, tuple[str, str, str, str, str]]) -> None:
    for name, (table, *_definition) in keys.items():
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")


def set_primary_keys(columns: str) -> None:
    for table in TEAM_TABLES:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT pk_{table}")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({columns})")


def set_policy(table: str, condition: str) -> None:
    op.execute(
        f"ALTER POLICY team_isolation ON {table} USING ({condition}) WITH CHECK ({condition})"
    )


def upgrade() -> None:
    team_rules = importlib.import_module("skill_store._migrations.versions.0003_team_rules")
    for name in REPLACED_RULES:
        table, definition = team_rules.TRIGGERS[name]
        op.execute(f"DROP TRIGGER {name} ON {table}")
        op.execute(f"DROP FUNCTION {rule_function(definition)}")
    drop_foreign_keys(OLD_FOREIGN_KEYS)

    op.add_column("message", sa.Column("team_id", sa.Uuid(), nullable=True))
    op.execute(
        "UPDATE message AS m SET team_id = c.team_id FROM conversation AS c"
        " WHERE c.id = m.conversation_id"
    )
    op.alter_column("message", "team_id", nullable=False)
    op.add_column("memory_tag", sa.Column("team_id", sa.Uuid(), nullable=True))
    op.execute(
        "UPDATE memory_tag AS t SET team_id = m.team_id FROM memory AS m WHERE m.id = t.memory_id"
    )
    op.alter_column("memory_tag", "team_id", nullable=False)
    op.execute("ALTER TABLE memory_log DISABLE TRIGGER trg_memory_log_no_change")
    op.execute(
        "UPDATE memory_log AS l SET team_id = m.team_id FROM memory AS m"
        " WHERE l.team_id IS NULL AND m.id = l.memory_id"
    )
    op.execute("ALTER TABLE memory_log ENABLE TRIGGER trg_memory_log_no_change")
    op.execute(UNKNOWN_TEAMS)
    op.alter_column("memory_log", "team_id", nullable=False)

    set_primary_keys("team_id, id")
    op.drop_constraint("uq_memory_tag", "memory_tag", type_="unique")
    op.create_unique_constraint("uq_memory_tag", "memory_tag", ["team_id", "memory_id", "tag"])
    add_foreign_keys(FOREIGN_KEYS)

    for table in ("message", "memory_tag"):
        set_policy(table, OWN_TEAM)
    op.execute(UPDATE_CONVERSATION_STATS)
    for definition in TEAM_FUNCTIONS.values():
        op.execute(definition)


def downgrade() -> None:
    team_rules = importlib.import_module("skill_store._migrations.versions.0003_team_rules")
    tenancy = importlib.import_module("skill_store._migrations.versions.0004_tenancy")
    op.execute(
        SHARED_IDS.format(
            shared=" UNION ALL ".join(
                f"SELECT '{table}' AS table_name, id FROM {table} GROUP BY id HAVING count(*) > 1"
                for table in TEAM_TABLES
            )
        )
    )
    for signature in TEAM_FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
    op.execute(tenancy.UPDATE_CONVERSATION_STATS)
    for table in ("message", "memory_tag"):
        set_policy(table, tenancy.POLICIES[table][0])

    drop_foreign_keys(FOREIGN_KEYS)
    op.drop_constraint("uq_memory_tag", "memory_tag", type_="unique")
    op.create_unique_constraint("uq_memory_tag", "memory_tag", ["memory_id", "tag"])
    set_primary_keys("id")
    op.alter_column("memory_log", "team_id", nullable=True)
    op.drop_column("memory_tag", "team_id")
    op.drop_column("message", "team_id")
    add_foreign_keys(OLD_FOREIGN_KEYS)

    for name in REPLACED_RULES:
        table, definition = team_rules.TRIGGERS[name]
        op.execute(team_rules.FUNCTIONS[rule_function(definition)])
        op.execute(f"CREATE CONSTRAINT TRIGGER {name} {definition}")
