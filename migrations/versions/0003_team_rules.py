"""Same-team references: a row may name only agents, conversations and members of its team.

Foreign keys alone let a memory of team A name an agent of team B. These rules are
constraint triggers, checked at the end of each statement like foreign keys:

- a memory's agent and source conversation belong to the memory's team;
- a conversation's agent belongs to its team, and its user is a member of it;
- a message's agent belongs to the team of the message's conversation.

A violation is SQLSTATE 23503 (foreign_key_violation) under the rule's own constraint name,
with a detail `Key (id, ...)=(...)` naming the rows. The checks run after the foreign keys'
own (triggers fire in name order, and those of foreign keys start with "RI_"), so a row
that does not exist is reported by its foreign key. They read the referenced rows as the
current role: a row that role cannot see (row-level security) fails the check.

Moving an agent or a conversation to another team is checked from the other side: it fails
while rows of its old team name it (move rows that name each other in one statement, e.g.
`WITH ... UPDATE message ... UPDATE conversation ...`: the checks run at its end).
Leaving a team keeps one's conversations in it: the membership is checked when a
conversation is written, not when a membership is removed.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def violation(rule: str, table: str, message: str, detail: str) -> str:
    """A RAISE of foreign_key_violation for `rule`; `message` and `detail` are format() calls."""
    return (
        f"RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', CONSTRAINT = '{rule}',"
        f" TABLE = '{table}', MESSAGE = {message}, DETAIL = {detail};"
    )


MEMORY_AGENT = violation(
    "fk_memory_agent_team",
    "memory",
    "format('agent %s is not an agent of team %s, the team of memory %s',"
    " r.agent_id, r.team_id, r.id)",
    "format('Key (id, team_id, agent_id)=(%s, %s, %s)', r.id, r.team_id, r.agent_id)",
)
MEMORY_CONVERSATION = violation(
    "fk_memory_source_conversation_team",
    "memory",
    "format('conversation %s is not a conversation of team %s, the team of memory %s',"
    " r.source_conversation_id, r.team_id, r.id)",
    "format('Key (id, team_id, source_conversation_id)=(%s, %s, %s)',"
    " r.id, r.team_id, r.source_conversation_id)",
)
CONVERSATION_AGENT = violation(
    "fk_conversation_agent_team",
    "conversation",
    "format('agent %s is not an agent of team %s, the team of conversation %s',"
    " r.agent_id, r.team_id, r.id)",
    "format('Key (id, team_id, agent_id)=(%s, %s, %s)', r.id, r.team_id, r.agent_id)",
)
CONVERSATION_USER = violation(
    "fk_conversation_user_team",
    "conversation",
    "format('user %s is not a member of team %s, the team of conversation %s',"
    " r.user_id, r.team_id, r.id)",
    "format('Key (id, team_id, user_id)=(%s, %s, %s)', r.id, r.team_id, r.user_id)",
)
MESSAGE_AGENT = violation(
    "fk_message_agent_team",
    "message",
    "format('agent %s is not an agent of the team of conversation %s (message %s)',"
    " r.agent_id, r.conversation_id, r.id)",
    "format('Key (id, conversation_id, agent_id)=(%s, %s, %s)',"
    " r.id, r.conversation_id, r.agent_id)",
)

# The checks read with the current role's rights and take no lock: a row the role cannot
# see fails them. The foreign keys of a row being inserted, or whose reference changes,
# already lock the referenced rows (FOR KEY SHARE); a move's check waits for those locks
# (FOR UPDATE) and so sees every row written before it.
FUNCTIONS = {
    "check_memory_agent_team()": f"""
CREATE FUNCTION check_memory_agent_team() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r memory := NEW;
BEGIN
    PERFORM FROM agent WHERE id = r.agent_id AND team_id = r.team_id;
    IF NOT FOUND THEN
        {MEMORY_AGENT}
    END IF;
    RETURN NULL;
END
$$""",
    "check_memory_source_conversation_team()": f"""
CREATE FUNCTION check_memory_source_conversation_team() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r memory := NEW;
BEGIN
    PERFORM FROM conversation
    WHERE id = r.source_conversation_id AND team_id = r.team_id;
    IF NOT FOUND THEN
        {MEMORY_CONVERSATION}
    END IF;
    RETURN NULL;
END
$$""",
    "check_conversation_agent_team()": f"""
CREATE FUNCTION check_conversation_agent_team() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r conversation := NEW;
BEGIN
    PERFORM FROM agent WHERE id = r.agent_id AND team_id = r.team_id;
    IF NOT FOUND THEN
        {CONVERSATION_AGENT}
    END IF;
    RETURN NULL;
END
$$""",
    "check_conversation_user_team()": f"""
CREATE FUNCTION check_conversation_user_team() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r conversation := NEW;
BEGIN
    PERFORM FROM team_membership WHERE user_id = r.user_id AND team_id = r.team_id;
    IF NOT FOUND THEN
        {CONVERSATION_USER}
    END IF;
    RETURN NULL;
END
$$""",
    "check_message_agent_team()": f"""
CREATE FUNCTION check_message_agent_team() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r message := NEW;
BEGIN
    PERFORM FROM conversation AS c JOIN agent AS a ON a.team_id = c.team_id
    WHERE c.id = r.conversation_id AND a.id = r.agent_id;
    IF NOT FOUND THEN
        {MESSAGE_AGENT}
    END IF;
    RETURN NULL;
END
$$""",
    "check_agent_team_move()": f"""
CREATE FUNCTION check_agent_team_move() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM FROM agent WHERE id = NEW.id FOR UPDATE;
    SELECT id, team_id, agent_id INTO r FROM memory
    WHERE agent_id = NEW.id AND team_id <> NEW.team_id LIMIT 1;
    IF FOUND THEN
        {MEMORY_AGENT}
    END IF;
    SELECT id, team_id, agent_id INTO r FROM conversation
    WHERE agent_id = NEW.id AND team_id <> NEW.team_id LIMIT 1;
    IF FOUND THEN
        {CONVERSATION_AGENT}
    END IF;
    SELECT m.id, m.conversation_id, m.agent_id INTO r
    FROM message AS m JOIN conversation AS c ON c.id = m.conversation_id
    WHERE m.agent_id = NEW.id AND c.team_id <> NEW.team_id LIMIT 1;
    IF FOUND THEN
        {MESSAGE_AGENT}
    END IF;
    RETURN NULL;
END
$$""",
    "check_conversation_team_move()": f"""
CREATE FUNCTION check_conversation_team_move() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM FROM conversation WHERE id = NEW.id FOR UPDATE;
    SELECT id, team_id, source_conversation_id INTO r FROM memory
    WHERE source_conversation_id = NEW.id AND team_id <> NEW.team_id LIMIT 1;
    IF FOUND THEN
        {MEMORY_CONVERSATION}
    END IF;
    SELECT m.id, m.conversation_id, m.agent_id INTO r FROM message AS m
    WHERE m.conversation_id = NEW.id AND m.agent_id IS NOT NULL
      AND NOT EXISTS (SELECT FROM agent AS a WHERE a.id = m.agent_id AND a.team_id = NEW.team_id)
    LIMIT 1;
    IF FOUND THEN
        {MESSAGE_AGENT}
    END IF;
    RETURN NULL;
END
$$""",
}

# The WHEN conditions keep rows without the reference (e.g. memories without an agent,
# copied in bulk) free of any check; UPDATE OF fires only when a named column is set.
TRIGGERS = {
    "fk_memory_agent_team": (
        "memory",
        "AFTER INSERT OR UPDATE OF team_id, agent_id ON memory FOR EACH ROW"
        " WHEN (NEW.agent_id IS NOT NULL) EXECUTE FUNCTION check_memory_agent_team()",
    ),
    "fk_memory_source_conversation_team": (
        "memory",
        "AFTER INSERT OR UPDATE OF team_id, source_conversation_id ON memory FOR EACH ROW"
        " WHEN (NEW.source_conversation_id IS NOT NULL)"
        " EXECUTE FUNCTION check_memory_source_conversation_team()",
    ),
    "fk_conversation_agent_team": (
        "conversation",
        "AFTER INSERT OR UPDATE OF team_id, agent_id ON conversation FOR EACH ROW"
        " EXECUTE FUNCTION check_conversation_agent_team()",
    ),
    "fk_conversation_user_team": (
        "conversation",
        "AFTER INSERT OR UPDATE OF team_id, user_id ON conversation FOR EACH ROW"
        " EXECUTE FUNCTION check_conversation_user_team()",
    ),
    "fk_message_agent_team": (
        "message",
        "AFTER INSERT OR UPDATE OF conversation_id, agent_id ON message FOR EACH ROW"
        " WHEN (NEW.agent_id IS NOT NULL) EXECUTE FUNCTION check_message_agent_team()",
    ),
    "fk_agent_team_move": (
        "agent",
        "AFTER UPDATE OF team_id ON agent FOR EACH ROW"
        " WHEN (NEW.team_id IS DISTINCT FROM OLD.team_id)"
        " EXECUTE FUNCTION check_agent_team_move()",
    ),
    "fk_conversation_team_move": (
        "conversation",
        "AFTER UPDATE OF team_id ON conversation FOR EACH ROW"
        " WHEN (NEW.team_id IS DISTINCT FROM OLD.team_id)"
        " EXECUTE FUNCTION check_conversation_team_move()",
    ),
}


def upgrade() -> None:
    for definition in FUNCTIONS.values():
        op.execute(definition)
    for name, (_table, definition) in TRIGGERS.items():
        op.execute(f"CREATE CONSTRAINT TRIGGER {name} {definition}")


def downgrade() -> None:
    for name, (table, _definition) in TRIGGERS.items():
        op.execute(f'DROP TRIGGER {name} ON "{table}"')
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
