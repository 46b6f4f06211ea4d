"""Tenancy: row-level security on every team-owned table, for a role that acts for one team.

`skill_store_team` is a NOLOGIN role. A session scoped to a team (`skill_store.scope_to_team`)
enters it with `SET LOCAL ROLE` and names its team in the transaction-local setting
`skill_store.team_id`; the policies then show and accept only that team's rows. Owners and
superusers bypass row-level security, so unscoped sessions keep seeing everything.

`memory_log` gains `team_id`, so a team keeps the history of its deleted memories; the audit
trigger writes it as the table owner (SECURITY DEFINER), and the team role may only read the log.
Conversation rows are locked in id order before their stats are updated, so concurrent inserts of
messages into several conversations cannot deadlock.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

import importlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLE = "skill_store_team"

CURRENT_TEAM = """
CREATE FUNCTION current_team_id() RETURNS uuid LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(current_setting('skill_store.team_id', true), '')::uuid
$$"""

OWN_TEAM = "team_id = current_team_id()"
OWN_CONVERSATION = (
    "EXISTS (SELECT FROM conversation AS c"
    " WHERE c.id = message.conversation_id AND c.team_id = current_team_id())"
)
OWN_MEMORY = (
    "EXISTS (SELECT FROM memory AS m"
    " WHERE m.id = memory_tag.memory_id AND m.team_id = current_team_id())"
)
TEAM_MEMBER = (
    "EXISTS (SELECT FROM team_membership AS m"
    ' WHERE m.user_id = "user".id AND m.team_id = current_team_id())'
)

# table: (row filter, privileges of the team role)
POLICIES = {
    "team": ("id = current_team_id()", "SELECT, UPDATE"),
    "team_membership": (OWN_TEAM, "SELECT, INSERT, UPDATE, DELETE"),
    "agent": (OWN_TEAM, "SELECT, INSERT, UPDATE, DELETE"),
    "conversation": (OWN_TEAM, "SELECT, INSERT, UPDATE, DELETE"),
    "message": (OWN_CONVERSATION, "SELECT, INSERT, UPDATE, DELETE"),
    "memory": (OWN_TEAM, "SELECT, INSERT, UPDATE, DELETE"),
    "memory_tag": (OWN_MEMORY, "SELECT, INSERT, UPDATE, DELETE"),
    "memory_log": (OWN_TEAM, "SELECT"),
    # Members of the team, without their password hashes.
    "user": (TEAM_MEMBER, "SELECT (id, email, display_name, is_active, created_at, updated_at)"),
}

LOG_MEMORY_CHANGE = """
CREATE OR REPLACE FUNCTION trigger_log_memory_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
DECLARE
    actor text := coalesce(nullif(current_setting('skill_store.actor', true), ''), 'system');
    why text := nullif(current_setting('skill_store.reason', true), '');
    logged_at timestamptz;
BEGIN
    SELECT GREATEST(now(), max(created_at) + interval '1 microsecond')
    INTO logged_at FROM memory_log
    WHERE memory_id = CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO memory_log (memory_id, team_id, action, new_content, new_importance,
                                new_tier, new_status, changed_by, reason, conversation_id,
                                created_at)
        VALUES (NEW.id, NEW.team_id, 'created', NEW.content, NEW.importance, NEW.tier::text,
                NEW.status::text, actor, why, NEW.source_conversation_id, logged_at);
        RETURN NULL;
    END IF;

    IF TG_OP = 'DELETE' THEN
        INSERT INTO memory_log (memory_id, team_id, action, old_content, old_importance,
                                old_tier, old_status, changed_by, reason, conversation_id,
                                created_at)
        VALUES (OLD.id, OLD.team_id, 'deleted', OLD.content, OLD.importance, OLD.tier::text,
                OLD.status::text, actor, why, OLD.source_conversation_id, logged_at);
        RETURN NULL;
    END IF;

    INSERT INTO memory_log (memory_id, team_id, action, old_content, new_content,
                            old_importance, new_importance, old_tier, new_tier, old_status,
                            new_status, changed_by, reason, conversation_id, related_memory_ids,
                            created_at)
    VALUES (
        NEW.id,
        NEW.team_id,
        CASE
            WHEN NEW.status IS DISTINCT FROM OLD.status AND NEW.status <> 'active'
                THEN NEW.status::text
            WHEN NEW.tier < OLD.tier THEN 'promoted'
            WHEN NEW.tier > OLD.tier THEN 'demoted'
            ELSE 'updated'
        END,
        OLD.content, NEW.content, OLD.importance, NEW.importance, OLD.tier::text,
        NEW.tier::text, OLD.status::text, NEW.status::text, actor, why,
        NEW.source_conversation_id,
        CASE WHEN NEW.superseded_by IS DISTINCT FROM OLD.superseded_by
             THEN ARRAY[NEW.superseded_by] END,
        logged_at
    );
    RETURN NULL;
END
$$"""

# Lock order: conversations in id order, taken before their stats are updated.
UPDATE_CONVERSATION_STATS = """
CREATE OR REPLACE FUNCTION trigger_update_conversation_stats() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM FROM conversation
    WHERE id IN (SELECT conversation_id FROM new_messages)
    ORDER BY id
    FOR NO KEY UPDATE;

    UPDATE conversation AS c
    SET message_count = c.message_count + s.messages,
        last_message_at = GREATEST(c.last_message_at, s.last_at),
        total_input_tokens = c.total_input_tokens + s.input_tokens,
        total_output_tokens = c.total_output_tokens + s.output_tokens
    FROM (
        SELECT conversation_id,
               count(*) AS messages,
               max(created_at) AS last_at,
               coalesce(sum(token_count) FILTER (WHERE role <> 'assistant'), 0) AS input_tokens,
               coalesce(sum(token_count) FILTER (WHERE role = 'assistant'), 0) AS output_tokens
        FROM new_messages
        GROUP BY conversation_id
    ) AS s
    WHERE c.id = s.conversation_id;
    RETURN NULL;
END
$$"""


def current_schema() -> str:
    """The schema the migration runs in, quoted as an identifier."""
    return str(op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one())


def upgrade() -> None:
    schema = current_schema()
    op.execute(f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN
                CREATE ROLE {ROLE} NOLOGIN;
            END IF;
            IF NOT pg_has_role(current_user, '{ROLE}', 'MEMBER') THEN
                EXECUTE 'GRANT {ROLE} TO ' || quote_ident(current_user);
            END IF;
        END $$""")
    op.execute(f"GRANT USAGE ON SCHEMA {schema} TO {ROLE}")

    op.add_column("memory_log", sa.Column("team_id", sa.Uuid(), nullable=True))
    op.execute("ALTER TABLE memory_log DISABLE TRIGGER trg_memory_log_no_change")
    op.execute(
        "UPDATE memory_log AS l SET team_id = m.team_id FROM memory AS m WHERE m.id = l.memory_id"
    )
    op.execute("ALTER TABLE memory_log ENABLE TRIGGER trg_memory_log_no_change")
    op.execute(LOG_MEMORY_CHANGE.format(schema=schema))
    op.execute(UPDATE_CONVERSATION_STATS)

    op.execute(CURRENT_TEAM)
    for table, (condition, privileges) in POLICIES.items():
        op.execute(f'GRANT {privileges} ON "{table}" TO {ROLE}')
        op.execute(f'ALTER TABLE "{table}" ENABLE ROW LEVEL SECURITY')
        op.execute(
            f'CREATE POLICY team_isolation ON "{table}"'
            f" USING ({condition}) WITH CHECK ({condition})"
        )


def downgrade() -> None:
    foundation = importlib.import_module("skill_store._migrations.versions.0001_foundation")
    schema = current_schema()
    for table in POLICIES:
        op.execute(f'DROP POLICY team_isolation ON "{table}"')
        op.execute(f'ALTER TABLE "{table}" DISABLE ROW LEVEL SECURITY')
        op.execute(f'REVOKE ALL ON "{table}" FROM {ROLE}')
    op.execute("DROP FUNCTION current_team_id()")
    for signature in ("trigger_update_conversation_stats()", "trigger_log_memory_change()"):
        op.execute(
            foundation.FUNCTIONS[signature].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
        )
    op.drop_column("memory_log", "team_id")
    op.execute(f"REVOKE USAGE ON SCHEMA {schema} FROM {ROLE}")
    # The role belongs to the whole server: it stays while another database still uses it.
    op.execute(f"""
        DO $$ BEGIN
            DROP ROLE {ROLE};
        EXCEPTION WHEN dependent_objects_still_exist THEN
            NULL;
        END $$""")
