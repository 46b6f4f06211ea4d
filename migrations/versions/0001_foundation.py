"""Foundation: nine tables, eight enum types, their functions and triggers.

The `vector` column takes its dimension from EMBEDDING_DIMENSIONS at migration time.
`gen_random_uuid()` is built into PostgreSQL 13 and later, so no UUID extension is needed.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import VECTOR
from sqlalchemy.dialects import postgresql

from skill_store.settings import get_settings

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENUMS = {
    "user_role": ("owner", "admin", "member", "viewer"),
    "agent_status": ("draft", "active", "paused", "archived"),
    "message_role": ("user", "assistant", "system", "tool"),
    "memory_type_enum": (
        "semantic",
        "episodic",
        "procedural",
        "agent_private",
        "shared",
        "identity",
        "user_profile",
    ),
    "memory_status": ("active", "superseded", "archived", "disputed"),
    "memory_tier": ("hot", "warm", "cold"),
    "memory_source": (
        "extraction",
        "explicit",
        "system",
        "feedback",
        "consolidation",
        "compaction",
    ),
    "conversation_status": ("active", "idle", "closed"),
}

TABLES_WITH_UPDATED_AT = ("user", "team", "agent", "conversation", "memory")

SLUG_CHECK = "slug ~ '^[a-z0-9][a-z0-9-]*[a-z0-9]$'"

PERSONALITY_DEFAULT = (
    '{"system_prompt_template":"","tone":"friendly","verbosity":"balanced",'
    '"formality":"adaptive","language":"en","traits":{},"voice_examples":[],'
    '"always_rules":[],"never_rules":[],"custom_instructions":""}'
)
MODEL_CONFIG_DEFAULT = (
    '{"model_name":"anthropic/claude-sonnet-4.5","temperature":0.7,'
    '"max_output_tokens":4096,"provider_overrides":{}}'
)
MEMORY_CONFIG_DEFAULT = (
    '{"token_budget":2000,"retrieval_weights":{"semantic":0.35,"recency":0.2,'
    '"importance":0.2,"continuity":0.15,"relationship":0.1},"auto_extract":true,'
    '"auto_pin_preferences":true,"summarize_interval":20,"remember_commands":'
    '["remember this","don\'t forget","keep in mind","note that"]}'
)
BOUNDARIES_DEFAULT = (
    '{"can_do":[],"cannot_do":[],"escalates_to":null,"max_autonomy":"execute",'
    '"allowed_domains":[],"max_tool_calls_per_turn":10}'
)

FUNCTIONS = {
    "trigger_set_updated_at()": """
CREATE FUNCTION trigger_set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$""",
    # Statement-level: one UPDATE per conversation however many messages a statement inserts.
    "trigger_update_conversation_stats()": """
CREATE FUNCTION trigger_update_conversation_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
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
$$""",
    # Who and why come from transaction-local settings (set_config(..., true)).
    # Log times are strictly increasing per memory, so the latest row at or before a
    # moment is that moment's state even when one transaction changes a memory twice.
    "trigger_log_memory_change()": """
CREATE FUNCTION trigger_log_memory_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    actor text := coalesce(nullif(current_setting('skill_store.actor', true), ''), 'system');
    why text := nullif(current_setting('skill_store.reason', true), '');
    logged_at timestamptz;
BEGIN
    SELECT GREATEST(now(), max(created_at) + interval '1 microsecond')
    INTO logged_at FROM memory_log
    WHERE memory_id = CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO memory_log (memory_id, action, new_content, new_importance, new_tier,
                                new_status, changed_by, reason, conversation_id, created_at)
        VALUES (NEW.id, 'created', NEW.content, NEW.importance, NEW.tier::text,
                NEW.status::text, actor, why, NEW.source_conversation_id, logged_at);
        RETURN NULL;
    END IF;

    IF TG_OP = 'DELETE' THEN
        INSERT INTO memory_log (memory_id, action, old_content, old_importance, old_tier,
                                old_status, changed_by, reason, conversation_id, created_at)
        VALUES (OLD.id, 'deleted', OLD.content, OLD.importance, OLD.tier::text,
                OLD.status::text, actor, why, OLD.source_conversation_id, logged_at);
        RETURN NULL;
    END IF;

    INSERT INTO memory_log (memory_id, action, old_content, new_content, old_importance,
                            new_importance, old_tier, new_tier, old_status, new_status,
                            changed_by, reason, conversation_id, related_memory_ids, created_at)
    VALUES (
        NEW.id,
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
$$""",
    "trigger_memory_log_append_only()": """
CREATE FUNCTION trigger_memory_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'memory_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$""",
    # Rows are locked in id order, so concurrent calls with overlapping ids cannot deadlock.
    # The flag tells the audit trigger that these updates are access bookkeeping.
    "update_memory_access(uuid[])": """
CREATE FUNCTION update_memory_access(memory_ids uuid[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    touched integer;
BEGIN
    PERFORM set_config('skill_store.recording_access', 'on', true);
    WITH locked AS (
        SELECT id FROM memory WHERE id = ANY(memory_ids) ORDER BY id FOR UPDATE
    )
    UPDATE memory AS m
    SET access_count = m.access_count + 1, last_accessed_at = now()
    FROM locked WHERE m.id = locked.id;
    GET DIAGNOSTICS touched = ROW_COUNT;
    PERFORM set_config('skill_store.recording_access', '', true);
    RETURN touched;
END
$$""",
    "reconstruct_memory_at(uuid, timestamptz)": """
CREATE FUNCTION reconstruct_memory_at(target_memory_id uuid, at timestamptz)
RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN action = 'deleted' THEN NULL ELSE new_content END
    FROM memory_log
    WHERE memory_id = target_memory_id
      AND created_at <= at
      AND (new_content IS NOT NULL OR action = 'deleted')
    ORDER BY created_at DESC
    LIMIT 1
$$""",
}

TRIGGERS = {
    **{
        f"trg_{table}_updated_at": (
            table,
            f'BEFORE UPDATE ON "{table}" FOR EACH ROW EXECUTE FUNCTION trigger_set_updated_at()',
        )
        for table in TABLES_WITH_UPDATED_AT
    },
    "trg_message_conversation_stats": (
        "message",
        "AFTER INSERT ON message REFERENCING NEW TABLE AS new_messages"
        " FOR EACH STATEMENT EXECUTE FUNCTION trigger_update_conversation_stats()",
    ),
    "trg_memory_log_insert_delete": (
        "memory",
        "AFTER INSERT OR DELETE ON memory FOR EACH ROW"
        " EXECUTE FUNCTION trigger_log_memory_change()",
    ),
    # Access bookkeeping (update_memory_access) is not a change worth auditing.
    "trg_memory_log_update": (
        "memory",
        "AFTER UPDATE ON memory FOR EACH ROW"
        " WHEN (current_setting('skill_store.recording_access', true) IS DISTINCT FROM 'on')"
        " EXECUTE FUNCTION trigger_log_memory_change()",
    ),
    "trg_memory_log_no_change": (
        "memory_log",
        "BEFORE UPDATE OR DELETE ON memory_log FOR EACH ROW"
        " EXECUTE FUNCTION trigger_memory_log_append_only()",
    ),
    "trg_memory_log_no_truncate": (
        "memory_log",
        "BEFORE TRUNCATE ON memory_log FOR EACH STATEMENT"
        " EXECUTE FUNCTION trigger_memory_log_append_only()",
    ),
}


def enum(name: str) -> postgresql.ENUM:
    return postgresql.ENUM(*ENUMS[name], name=name, create_type=False)


def id_column() -> sa.Column[sa.Uuid]:
    return sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False)


def timestamp_column(name: str) -> sa.Column[sa.DateTime]:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def text_array(name: str) -> sa.Column[sa.ARRAY[str]]:
    return sa.Column(
        name,
        postgresql.ARRAY(sa.Text()),
        server_default=sa.text("'{}'::text[]"),
        nullable=False,
    )


def jsonb(name: str, default: str) -> sa.Column[postgresql.JSONB]:
    return sa.Column(name, postgresql.JSONB(), server_default=default, nullable=False)


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    bind = op.get_bind()
    for name, labels in ENUMS.items():
        postgresql.ENUM(*labels, name=name).create(bind, checkfirst=False)

    op.create_table(
        "user",
        id_column(),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.true(), nullable=False),
        timestamp_column("created_at"),
        timestamp_column("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_user"),
        sa.CheckConstraint(r"email ~* '^[^@]+@[^@]+\.[^@]+$'", name="ck_user_email_format"),
    )
    op.create_index("uq_user_email", "user", [sa.text("lower(email)")], unique=True)

    op.create_table(
        "team",
        id_column(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        jsonb("settings", "{}"),
        text_array("shared_skill_names"),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_secret", sa.Text(), nullable=True),
        sa.Column("conversation_retention_days", sa.Integer(), server_default="90", nullable=False),
        timestamp_column("created_at"),
        timestamp_column("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_team"),
        sa.ForeignKeyConstraint(["owner_id"], ["user.id"], name="fk_team_owner_id_user"),
        sa.UniqueConstraint("slug", name="uq_team_slug"),
        sa.CheckConstraint(SLUG_CHECK, name="ck_team_slug_format"),
    )

    op.create_table(
        "team_membership",
        id_column(),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("role", enum("user_role"), server_default="member", nullable=False),
        timestamp_column("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_team_membership"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["user.id"],
            name="fk_team_membership_user_id_user",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["team_id"],
            ["team.id"],
            name="fk_team_membership_team_id_team",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("user_id", "team_id", name="uq_team_membership"),
    )
    op.create_index("idx_team_membership_team", "team_membership", ["team_id"])

    op.create_table(
        "agent",
        id_column(),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("tagline", sa.Text(), server_default="", nullable=False),
        sa.Column("avatar_emoji", sa.Text(), server_default="", nullable=False),
        jsonb("personality", PERSONALITY_DEFAULT),
        sa.Column(
            "personality_prompt",
            sa.Text(),
            sa.Computed("personality ->> 'system_prompt_template'", persisted=True),
        ),
        text_array("shared_skill_names"),
        text_array("custom_skill_names"),
        text_array("disabled_skill_names"),
        jsonb("model_config", MODEL_CONFIG_DEFAULT),
        sa.Column(
            "model_name",
            sa.Text(),
            sa.Computed("model_config ->> 'model_name'", persisted=True),
        ),
        jsonb("memory_config", MEMORY_CONFIG_DEFAULT),
        jsonb("boundaries", BOUNDARIES_DEFAULT),
        sa.Column("status", enum("agent_status"), server_default="draft", nullable=False),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        timestamp_column("created_at"),
        timestamp_column("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_agent"),
        sa.ForeignKeyConstraint(
            ["team_id"], ["team.id"], name="fk_agent_team_id_team", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["created_by"], ["user.id"], name="fk_agent_created_by_user"),
        sa.UniqueConstraint("team_id", "slug", name="uq_agent_team_slug"),
        sa.CheckConstraint(SLUG_CHECK, name="ck_agent_slug_format"),
    )
    op.create_index("idx_agent_team", "agent", ["team_id", "status"])

    op.create_table(
        "conversation",
        id_column(),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("status", enum("conversation_status"), server_default="active", nullable=False),
        sa.Column("message_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("total_input_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("total_output_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "token_count",
            sa.Integer(),
            sa.Computed("total_input_tokens + total_output_tokens", persisted=True),
            nullable=False,
        ),
        sa.Column("summary", sa.Text(), nullable=True),
        jsonb("metadata", "{}"),
        timestamp_column("last_message_at"),
        timestamp_column("created_at"),
        timestamp_column("updated_at"),
        sa.PrimaryKeyConstraint("id", name="pk_conversation"),
        sa.ForeignKeyConstraint(
            ["team_id"], ["team.id"], name="fk_conversation_team_id_team", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.id"], name="fk_conversation_agent_id_agent", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], name="fk_conversation_user_id_user"),
    )
    op.create_index(
        "idx_conversation_team_user", "conversation", ["team_id", "user_id", "last_message_at"]
    )
    op.create_index("idx_conversation_agent", "conversation", ["agent_id"])

    op.create_table(
        "message",
        id_column(),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("role", enum("message_role"), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("tool_calls", postgresql.JSONB(), nullable=True),
        sa.Column("tool_results", postgresql.JSONB(), nullable=True),
        sa.Column("token_count", sa.Integer(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("feedback_rating", sa.Text(), nullable=True),
        sa.Column("feedback_comment", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.clock_timestamp(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_message"),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversation.id"],
            name="fk_message_conversation_id_conversation",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.id"], name="fk_message_agent_id_agent", ondelete="SET NULL"
        ),
        sa.CheckConstraint(
            "feedback_rating IN ('positive', 'negative') OR feedback_rating IS NULL",
            name="ck_message_feedback_rating",
        ),
    )
    op.create_index("idx_message_conversation", "message", ["conversation_id", "created_at"])

    op.create_table(
        "memory",
        id_column(),
        sa.Column("team_id", sa.Uuid(), nullable=False),
        sa.Column("agent_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("memory_type", enum("memory_type_enum"), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("embedding", VECTOR(get_settings().embedding_dimensions), nullable=True),
        sa.Column("importance", sa.Integer(), server_default="5", nullable=False),
        sa.Column("confidence", sa.Float(), server_default="1.0", nullable=False),
        sa.Column("access_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("is_pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "source_type", enum("memory_source"), server_default="extraction", nullable=False
        ),
        sa.Column("source_conversation_id", sa.Uuid(), nullable=True),
        sa.Column("source_message_ids", postgresql.ARRAY(sa.Uuid()), nullable=True),
        sa.Column("extraction_model", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("superseded_by", sa.Uuid(), nullable=True),
        sa.Column("contradicts", postgresql.ARRAY(sa.Uuid()), nullable=True),
        sa.Column("related_to", postgresql.ARRAY(sa.Uuid()), nullable=True),
        jsonb("metadata", "{}"),
        sa.Column("tier", enum("memory_tier"), server_default="warm", nullable=False),
        sa.Column("status", enum("memory_status"), server_default="active", nullable=False),
        timestamp_column("created_at"),
        timestamp_column("updated_at"),
        timestamp_column("last_accessed_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_memory"),
        sa.ForeignKeyConstraint(
            ["team_id"], ["team.id"], name="fk_memory_team_id_team", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agent.id"], name="fk_memory_agent_id_agent", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["user.id"], name="fk_memory_user_id_user"),
        sa.ForeignKeyConstraint(
            ["source_conversation_id"],
            ["conversation.id"],
            name="fk_memory_source_conversation_id_conversation",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by"], ["memory.id"], name="fk_memory_superseded_by_memory"
        ),
        sa.CheckConstraint("importance BETWEEN 1 AND 10", name="ck_memory_importance"),
        sa.CheckConstraint("confidence BETWEEN 0.0 AND 1.0", name="ck_memory_confidence"),
    )
    op.create_index("idx_memory_agent", "memory", ["agent_id"])
    op.create_index("idx_memory_user", "memory", ["user_id"])
    op.create_index("idx_memory_superseded_by", "memory", ["superseded_by"])
    op.create_index("idx_memory_source_conversation", "memory", ["source_conversation_id"])
    op.execute(
        "CREATE INDEX idx_memory_embedding ON memory"
        " USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64)"
    )
    op.execute(
        "CREATE INDEX idx_memory_team_type ON memory (team_id, memory_type) WHERE status = 'active'"
    )
    op.execute(
        "CREATE INDEX idx_memory_expires ON memory (expires_at) WHERE expires_at IS NOT NULL"
    )

    op.create_table(
        "memory_log",
        id_column(),
        sa.Column("memory_id", sa.Uuid(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("old_content", sa.Text(), nullable=True),
        sa.Column("new_content", sa.Text(), nullable=True),
        sa.Column("old_importance", sa.Integer(), nullable=True),
        sa.Column("new_importance", sa.Integer(), nullable=True),
        sa.Column("old_tier", sa.Text(), nullable=True),
        sa.Column("new_tier", sa.Text(), nullable=True),
        sa.Column("old_status", sa.Text(), nullable=True),
        sa.Column("new_status", sa.Text(), nullable=True),
        sa.Column("changed_by", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("conversation_id", sa.Uuid(), nullable=True),
        sa.Column("related_memory_ids", postgresql.ARRAY(sa.Uuid()), nullable=True),
        timestamp_column("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_memory_log"),
    )
    op.create_index("idx_memory_log_memory", "memory_log", ["memory_id", "created_at"])

    op.create_table(
        "memory_tag",
        id_column(),
        sa.Column("memory_id", sa.Uuid(), nullable=False),
        sa.Column("tag", sa.Text(), nullable=False),
        timestamp_column("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_memory_tag"),
        sa.ForeignKeyConstraint(
            ["memory_id"],
            ["memory.id"],
            name="fk_memory_tag_memory_id_memory",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("memory_id", "tag", name="uq_memory_tag"),
    )
    op.create_index("idx_memory_tag_tag", "memory_tag", ["tag"])

    for definition in FUNCTIONS.values():
        op.execute(definition)
    for name, (_table, definition) in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {definition}")


def downgrade() -> None:
    for name, (table, _definition) in TRIGGERS.items():
        op.execute(f'DROP TRIGGER {name} ON "{table}"')
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
    for table in (
        "memory_tag",
        "memory_log",
        "memory",
        "message",
        "conversation",
        "agent",
        "team_membership",
        "team",
        "user",
    ):
        op.drop_table(table)
    for name in ENUMS:
        op.execute(f"DROP TYPE {name}")
