"""Keys that let the schema be distributed by team (migration 0005), read from pg_constraint.

Every table but the reference tables `user` and `team` holds a team's rows: it has a NOT NULL
`team_id`, which its primary key, each unique constraint or index, and each foreign key to
another team table include (team_id to team_id). A foreign key that sets its reference to NULL
on delete names the columns it clears, never team_id. A new table breaks these rules unless it
follows them, or is declared a reference table here.

Then the migration itself: a database filled through 0004 keeps every row, and its content,
through the upgrade and back down.
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from skill_store import MigrationRefusedError
from skill_store.database import alembic_config, migrate, run_alembic

from ..support import TABLES

REFERENCE_TABLES = {"user", "team"}
TEAM_TABLES = set(TABLES) - REFERENCE_TABLES

CONSTRAINTS = """
SELECT t.relname, c.conname, c.contype::text, r.relname, c.confdeltype::text,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY AS k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY AS k(n, i)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i),
       ARRAY(SELECT a.attname FROM unnest(c.confdelsetcols) AS k(n)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n)
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
LEFT JOIN pg_class r ON r.oid = c.confrelid
WHERE t.relnamespace = 'public'::regnamespace AND c.contype IN ('p', 'u', 'f')
"""
UNIQUE_INDEXES = """
SELECT t.relname, i.relname,
       ARRAY(SELECT a.attname FROM unnest(x.indkey) AS k(n)
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.n)
FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
WHERE t.relnamespace = 'public'::regnamespace AND x.indisunique
  AND NOT EXISTS (
      SELECT FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.contype IN ('p', 'u')
  )
"""
TEAM_COLUMNS = """
SELECT t.relname, a.attnotnull
FROM pg_class t
LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attname = 'team_id' AND NOT a.attisdropped
WHERE t.relnamespace = 'public'::regnamespace AND t.relkind IN ('r', 'p')
  AND t.relname <> 'alembic_version'
"""


async def rows(connection: AsyncConnection, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in (await connection.execute(text(sql), params)).all()]


async def key_violations(connection: AsyncConnection) -> list[str]:
    """Every way the schema's tables break the rules of a schema distributed by team."""
    broken = []
    team_tables = set()
    for table, not_null in await rows(connection, TEAM_COLUMNS):
        if table in REFERENCE_TABLES:
            continue
        team_tables.add(table)
        if not not_null:
            broken.append(f"{table}: no NOT NULL team_id")
    for table, name, kind, referenced, on_delete, columns, targets, cleared in await rows(
        connection, CONSTRAINTS
    ):
        if table not in team_tables:
            continue
        if kind in ("p", "u") and "team_id" not in columns:
            broken.append(f"{table}.{name}: key {columns} without team_id")
        if kind == "f" and referenced in team_tables:
            pairs = dict(zip(columns, targets, strict=True))
            if pairs.get("team_id") != "team_id":
                broken.append(f"{table}.{name}: reference to {referenced} without team_id")
            if on_delete in ("n", "d") and (not cleared or "team_id" in cleared):
                broken.append(f"{table}.{name}: ON DELETE clears team_id")
    for table, name, columns in await rows(connection, UNIQUE_INDEXES):
        if table in team_tables and "team_id" not in columns:
            broken.append(f"{table}.{name}: unique index {columns} without team_id")
    return broken


async def test_every_team_table_is_keyed_by_its_team(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert await key_violations(connection) == []
        tables = {table for table, _ in await rows(connection, TEAM_COLUMNS)}
        foreign_keys = await rows(connection, CONSTRAINTS + " AND c.contype = 'f'")
    assert tables - REFERENCE_TABLES == TEAM_TABLES
    between_teams = {
        (table, tuple(columns), referenced, tuple(referenced_columns), tuple(cleared))
        for table, _, _, referenced, _, columns, referenced_columns, cleared in foreign_keys
        if table in TEAM_TABLES and referenced in TEAM_TABLES
    }
    key = ("team_id", "id")
    assert between_teams == {
        ("conversation", ("team_id", "agent_id"), "agent", key, ()),
        ("message", ("team_id", "conversation_id"), "conversation", key, ()),
        ("message", ("team_id", "agent_id"), "agent", key, ("agent_id",)),
        ("memory", ("team_id", "agent_id"), "agent", key, ()),
        (
            "memory",
            ("team_id", "source_conversation_id"),
            "conversation",
            key,
            ("source_conversation_id",),
        ),
        ("memory", ("team_id", "superseded_by"), "memory", key, ()),
        ("memory_tag", ("team_id", "memory_id"), "memory", key, ()),
    }


BAD_TABLES = {
    "no team_id": (
        "CREATE TABLE note (id uuid PRIMARY KEY)",
        ["note: no NOT NULL team_id", "note.note_pkey: key ['id'] without team_id"],
    ),
    "nullable team_id": (
        "CREATE TABLE note (id uuid, team_id uuid, PRIMARY KEY (id))",
        ["note: no NOT NULL team_id", "note.note_pkey: key ['id'] without team_id"],
    ),
    "unique without team_id": (
        "CREATE TABLE note (team_id uuid NOT NULL, id uuid, slug text UNIQUE,"
        " PRIMARY KEY (team_id, id))",
        [
            "note.note_slug_key: key ['slug'] without team_id",
        ],
    ),
    "reference by id alone": (
        "CREATE UNIQUE INDEX memory_id_once ON memory (id);"
        " CREATE TABLE note (team_id uuid NOT NULL, id uuid, memory_id uuid REFERENCES memory (id),"
        " PRIMARY KEY (team_id, id))",
        [
            "memory.memory_id_once: unique index ['id'] without team_id",
            "note.note_memory_id_fkey: reference to memory without team_id",
        ],
    ),
    "SET NULL of the whole key": (
        "CREATE TABLE note (team_id uuid NOT NULL, id uuid, memory_id uuid,"
        " PRIMARY KEY (team_id, id), FOREIGN KEY (team_id, memory_id)"
        " REFERENCES memory (team_id, id) ON DELETE SET NULL)",
        ["note.note_team_id_memory_id_fkey: ON DELETE clears team_id"],
    ),
}


@pytest.mark.parametrize("case", BAD_TABLES)
async def test_a_table_that_breaks_the_rules_is_named(engine: AsyncEngine, case: str) -> None:
    ddl, expected = BAD_TABLES[case]
    async with engine.connect() as connection:
        await connection.begin()
        for statement in ddl.split(";"):
            await connection.execute(text(statement))
        assert sorted(await key_violations(connection)) == sorted(expected)
        await connection.rollback()


# -- the migration on a database filled through 0004 ------------------------------------

FILL = """
INSERT INTO "user" (id, email, password_hash, display_name) VALUES
    ('00000000-0000-4000-8000-000000000001', 'ada@example.com', 'h', 'Ada'),
    ('00000000-0000-4000-8000-000000000002', 'grace@example.com', 'h', 'Grace');
INSERT INTO team (id, name, slug, owner_id) VALUES
    ('00000000-0000-4000-8000-0000000000a1', 'Acme', 'acme',
     '00000000-0000-4000-8000-000000000001'),
    ('00000000-0000-4000-8000-0000000000a2', 'Globex', 'globex',
     '00000000-0000-4000-8000-000000000002');
INSERT INTO team_membership (user_id, team_id, role)
    SELECT owner_id, id, 'owner' FROM team;
INSERT INTO agent (id, team_id, name, slug)
    SELECT gen_random_uuid(), id, 'Kyra', 'kyra' FROM team;
INSERT INTO conversation (team_id, agent_id, user_id, title)
    SELECT a.team_id, a.id, t.owner_id, 'chat ' || n
    FROM agent a JOIN team t ON t.id = a.team_id, generate_series(1, 2) AS n;
INSERT INTO message (conversation_id, agent_id, role, content, token_count)
    SELECT c.id, CASE WHEN n % 2 = 0 THEN c.agent_id END,
           CASE WHEN n % 2 = 0 THEN 'assistant' ELSE 'user' END::message_role, 'm' || n, n
    FROM conversation c, generate_series(1, 3) AS n;
INSERT INTO memory (team_id, agent_id, memory_type, content, source_conversation_id)
    SELECT c.team_id, c.agent_id, 'episodic', 'about ' || c.title, c.id FROM conversation c;
INSERT INTO memory (team_id, memory_type, content)
    SELECT id, 'semantic', 'kept apart' FROM team;
UPDATE memory AS m SET status = 'superseded', superseded_by = n.id
    FROM memory AS n
    WHERE n.team_id = m.team_id AND n.content = 'kept apart' AND m.content LIKE 'about chat 1';
INSERT INTO memory_tag (memory_id, tag)
    SELECT id, tag FROM memory, unnest(ARRAY['tea', 'work']) AS tag;
-- A row written without a team, as 0004 allowed: the upgrade takes its memory's.
INSERT INTO memory_log (memory_id, action, changed_by)
    SELECT id, 'noted', 'ops' FROM memory WHERE content = 'kept apart';
-- The history of a deleted memory keeps the team 0004 gave it.
INSERT INTO memory (team_id, memory_type, content)
    SELECT id, 'semantic', 'forgotten' FROM team;
DELETE FROM memory WHERE content = 'forgotten'
"""

# Every column but team_id (which 0005 adds to message and memory_tag, and fills in
# memory_log), so that one fingerprint compares the rows before, after, and back down.
CONTENT = " UNION ALL ".join(
    f"SELECT '{table}', count(*),"
    f" md5(coalesce(string_agg((to_jsonb(t) - 'team_id')::text, ','"
    f" ORDER BY (to_jsonb(t) - 'team_id')::text), ''))"
    f' FROM "{table}" AS t'
    for table in TABLES
)
TEAMS_OF_ROWS = """
SELECT
    (SELECT count(*) FROM message m JOIN conversation c
        ON c.team_id = m.team_id AND c.id = m.conversation_id),
    (SELECT count(*) FROM memory_tag g JOIN memory m
        ON m.team_id = g.team_id AND m.id = g.memory_id),
    (SELECT count(*) FROM memory_log l JOIN memory m
        ON m.team_id = l.team_id AND m.id = l.memory_id),
    (SELECT count(*) FROM memory_log WHERE team_id IS NULL)
"""
COLUMNS = """
SELECT table_name FROM information_schema.columns
WHERE table_schema = 'public' AND column_name = 'team_id' ORDER BY table_name
"""


@pytest.fixture
async def empty_engine(empty_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(empty_database_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


async def content(engine: AsyncEngine) -> dict[str, tuple[int, str]]:
    async with engine.connect() as connection:
        return {table: (count, digest) for table, count, digest in await rows(connection, CONTENT)}


async def test_the_upgrade_keeps_every_row_and_the_downgrade_restores_0004(
    empty_engine: AsyncEngine,
) -> None:
    await migrate(empty_engine, "0004")
    async with empty_engine.begin() as connection:
        for statement in FILL.split(";"):
            await connection.execute(text(statement))
    before = await content(empty_engine)
    assert all(count > 0 for count, _ in before.values()), before

    await migrate(empty_engine, "0005")  # later migrations add columns to memory
    assert await content(empty_engine) == before
    async with empty_engine.connect() as connection:
        [(messages, tags, logged, without_team)] = await rows(connection, TEAMS_OF_ROWS)
        assert (messages, tags, without_team) == (before["message"][0], before["memory_tag"][0], 0)
        # Every log row of a memory that still exists has its team; those of the deleted one
        # kept theirs.
        assert logged == before["memory_log"][0] - 4
        assert [name for (name,) in await rows(connection, COLUMNS)] == sorted(TEAM_TABLES)
        assert await key_violations(connection) == []

    await run_alembic(lambda config: command.downgrade(config, "0004"), empty_engine)
    assert await content(empty_engine) == before
    async with empty_engine.connect() as connection:
        assert [name for (name,) in await rows(connection, COLUMNS)] == sorted(
            TEAM_TABLES - {"message", "memory_tag"}
        )
        # 0004's same-team triggers are back.
        error = "INSERT INTO memory (team_id, memory_type, content, agent_id) SELECT t.id,"
        error += " 'semantic', 'x', a.id FROM team t JOIN agent a ON a.team_id <> t.id LIMIT 1"
        with pytest.raises(DBAPIError, match=r"is not an agent of team .*, the team of memory"):
            await connection.execute(text(error))

    await migrate(empty_engine, "0005")
    assert await content(empty_engine) == before
    await migrate(empty_engine)


async def test_log_rows_whose_team_cannot_be_known_stop_the_upgrade(
    empty_engine: AsyncEngine,
) -> None:
    await migrate(empty_engine, "0004")
    async with empty_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO memory_log (memory_id, action, changed_by)"
                " SELECT gen_random_uuid(), 'created', 'old' FROM generate_series(1, 3)"
            )
        )
    before = await content(empty_engine)
    with pytest.raises(MigrationRefusedError, match="3 memory_log rows have no team_id"):
        await migrate(empty_engine)
    assert await content(empty_engine) == before
    async with empty_engine.connect() as connection:
        assert await rows(connection, "SELECT version_num FROM alembic_version") == [("0004",)]
        assert "message" not in {name for (name,) in await rows(connection, COLUMNS)}


async def test_an_id_used_by_two_teams_stops_the_downgrade_to_0004(
    empty_engine: AsyncEngine,
) -> None:
    await migrate(empty_engine)
    async with empty_engine.begin() as connection:
        for statement in FILL.split(";")[:3]:  # users, teams, memberships
            await connection.execute(text(statement))
        # An export of one team imported into another keeps its ids.
        await connection.execute(
            text(
                "INSERT INTO memory (id, team_id, memory_type, content)"
                " SELECT '00000000-0000-4000-8000-00000000000f', id, 'semantic', 'copied'"
                " FROM team"
            )
        )
    before = await content(empty_engine)

    with pytest.raises(
        MigrationRefusedError, match="1 ids are each used by rows of several"
    ) as refused:
        await run_alembic(lambda config: command.downgrade(config, "0004"), empty_engine)

    assert "\n" not in str(refused.value)
    assert "Give those rows new ids" in str(refused.value)
    assert await content(empty_engine) == before
    async with empty_engine.connect() as connection:
        [(version,)] = await rows(connection, "SELECT version_num FROM alembic_version")
    assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
