"""Every statement the repositories send on a team's table names the team.

On a database distributed by `team_id` (Citus), such a statement is a router query: it goes to
the one shard that holds the team's rows. The workload below calls every public repository
method (a test checks that none is left out), captures the SQL each call sends — through
SQLAlchemy's `before_cursor_execute` event, and asyncpg's COPY and executemany that `add_many`
uses — and checks each statement: every team table it reads, changes or deletes from is
compared with a `team_id` parameter, every one it inserts or copies into gets a `team_id`
column, and the database functions that read team tables are called with a team.
"""

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import (
    AgentRepository,
    ConversationRepository,
    HashingEmbedder,
    Memory,
    MemoryRepository,
    MemoryTier,
    MemoryType,
    StatsRepository,
    TeamRepository,
    UserRepository,
    get_session_factory,
    scope_to_team,
)
from skill_store.portability import export_memories
from skill_store.settings import get_settings

from ..support import TEAM_TABLES, migrated_database, unit_vector

# The database functions that read team tables: the argument that names the team, and how
# many arguments the team's overload takes.
TEAM_FUNCTIONS = {
    "search_memories": (1, 8),
    "update_memory_access": (0, 2),
    "reconstruct_memory_at": (0, 3),
}
CROSS_TEAM = {
    "TeamRepository.teams_for_user",
    "TeamRepository.with_counts",
    "StatsRepository.rows_per_table",
    "StatsRepository.memory_groups",
}
"""Calls that read every team's rows by design: a user's teams are found in every shard, and
the counts of every team are an operator's view of the whole store."""

_RELATION = re.compile(
    r"\b(?P<verb>FROM|JOIN|UPDATE|INTO|COPY)\s+(?P<table>\w+)(?:\s+AS\s+(?P<alias>\w+))?", re.I
)
_PARAMETER = r"(?:\$\d+(?:::UUID)?|CAST\(\$\d+(?:::UUID)? AS UUID\))"


def arguments(sql: str, start: int) -> list[str]:
    """The top-level arguments of the call whose opening parenthesis is at `start`."""
    depth, current, found = 0, "", []
    for character in sql[start:]:
        if character == "(":
            depth += 1
            if depth == 1:
                continue
        elif character == ")":
            depth -= 1
            if depth == 0:
                break
        if character == "," and depth == 1:
            found.append(current.strip())
            current = ""
        else:
            current += character
    return [*found, current.strip()]


def unrouted(sql: str) -> list[str]:
    """The team tables and functions that `sql` reaches without naming a team."""
    sql = " ".join(sql.split())
    missing = []
    uses: dict[str, int] = {}
    for relation in _RELATION.finditer(sql):
        table = relation["table"].lower()
        if table not in TEAM_TABLES:
            continue
        if relation["verb"].upper() in ("INTO", "COPY"):
            columns = re.match(r"\s*\(([^)]*)\)", sql[relation.end() :])
            if columns is None or "team_id" not in columns[1].replace('"', "").split(", "):
                missing.append(f"{table} (no team_id column)")
            continue
        name = relation["alias"] or table
        uses[name] = uses.get(name, 0) + 1
    for name, count in uses.items():
        compared = re.findall(rf"\b{name}\.team_id = {_PARAMETER}", sql)
        if len(compared) < count:
            missing.append(name)
    for function, (position, arity) in TEAM_FUNCTIONS.items():
        for call in re.finditer(rf"\b{function}\(", sql):
            given = arguments(sql, call.end() - 1)
            if len(given) != arity or not re.fullmatch(_PARAMETER, given[position]):
                missing.append(f"{function}()")
    return missing


class Capture:
    """The statements sent to the database, by the step that sent them."""

    def __init__(self) -> None:
        self.step = "setup"
        self.sent: list[tuple[str, str]] = []
        self.called: set[str] = set()

    def add(self, sql: str) -> None:
        self.sent.append((self.step, sql))

    def unrouted(self) -> list[str]:
        return [
            f"{step}: {', '.join(tables)} in {sql}"
            for step, sql in self.sent
            if step not in CROSS_TEAM and (tables := unrouted(sql))
        ]


@contextmanager
def capturing(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    """Every statement sent on the engine's connections, and asyncpg's COPY and executemany."""
    capture = Capture()

    def on_execute(*arguments: Any) -> None:
        capture.add(arguments[2])

    copy_records = asyncpg.Connection.copy_records_to_table
    executemany = asyncpg.Connection.executemany

    async def copy(self: Any, table: str, *, columns: list[str], **options: Any) -> Any:
        capture.add(f"COPY {table} ({', '.join(columns)}) FROM STDIN")
        return await copy_records(self, table, columns=columns, **options)

    async def many(self: Any, command: str, *arguments: Any, **options: Any) -> Any:
        capture.add(command)
        return await executemany(self, command, *arguments, **options)

    monkeypatch.setattr(asyncpg.Connection, "copy_records_to_table", copy)
    monkeypatch.setattr(asyncpg.Connection, "executemany", many)
    event.listen(engine.sync_engine, "before_cursor_execute", on_execute)
    try:
        yield capture
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", on_execute)


@pytest.fixture(scope="module")
async def router_engine(server_url: str) -> AsyncIterator[AsyncEngine]:
    async with migrated_database(server_url, "skill_store_router") as engine:
        yield engine


Step = Callable[[], Awaitable[Any]]


async def workload(session: AsyncSession, capture: Capture) -> dict[str, uuid.UUID]:
    """Every public repository method, each call's statements captured under its name."""
    users, teams = UserRepository(session), TeamRepository(session)
    agents, conversations = AgentRepository(session), ConversationRepository(session)
    memories = MemoryRepository(
        session, embedder=HashingEmbedder(get_settings().embedding_dimensions)
    )

    async def call(name: str, step: Step) -> Any:
        capture.step = name
        capture.called.add(name)
        result = await step()
        capture.step = "between steps"
        return result

    suffix = uuid.uuid4().hex[:8]
    ada = await call(
        "UserRepository.create",
        lambda: users.create(
            {
                "email": f"ada-{suffix}@example.com",
                "display_name": "Ada",
                "password": "correct horse",
            }
        ),
    )
    grace = await users.create(
        {
            "email": f"grace-{suffix}@example.com",
            "display_name": "Grace",
            "password": "correct horse",
        }
    )
    await call("UserRepository.get_by_email", lambda: users.get_by_email(ada.email))
    await call(
        "UserRepository.authenticate", lambda: users.authenticate(ada.email, "correct horse")
    )
    await call("UserRepository.update", lambda: users.update(ada.id, {"display_name": "Ada L."}))
    await call("UserRepository.set_password", lambda: users.set_password(grace.id, "battery horse"))
    await call("UserRepository.get_by_id", lambda: users.get_by_id(ada.id))
    await call("UserRepository.get_or_raise", lambda: users.get_or_raise(ada.id))
    await call("UserRepository.list", lambda: users.list(is_active=True))
    await call("UserRepository.count", lambda: users.count())
    team = await call(
        "TeamRepository.create",
        lambda: teams.create({"name": "Acme", "slug": f"acme-{suffix}", "owner_id": ada.id}),
    )
    t = {"team_id": team.id}
    await call("TeamRepository.add_member", lambda: teams.add_member(grace.id, team_id=team.id))
    await call(
        "TeamRepository.set_role", lambda: teams.set_role(grace.id, "admin", team_id=team.id)
    )
    await call("TeamRepository.members", lambda: teams.members(team_id=team.id))
    await call("TeamRepository.teams_for_user", lambda: teams.teams_for_user(ada.id))
    await call("TeamRepository.get_by_slug", lambda: teams.get_by_slug(team.slug))
    await call("TeamRepository.get_by_slug_or_raise", lambda: teams.get_by_slug_or_raise(team.slug))
    await call("TeamRepository.with_counts", lambda: teams.with_counts())
    await call("TeamRepository.update", lambda: teams.update(team.id, {"name": "Acme Corp"}))
    await call("TeamRepository.get_by_id", lambda: teams.get_by_id(team.id))
    await call("TeamRepository.get_or_raise", lambda: teams.get_or_raise(team.id))
    await call("TeamRepository.list", lambda: teams.list(slug=team.slug))
    await call("TeamRepository.count", lambda: teams.count())
    stats = StatsRepository(session)
    await call("StatsRepository.rows_per_table", lambda: stats.rows_per_table())
    await call("StatsRepository.memory_groups", lambda: stats.memory_groups())
    await call("StatsRepository.index_sizes", lambda: stats.index_sizes())

    personality = {"system_prompt_template": "You are Kyra."}
    kyra = await call(
        "AgentRepository.create",
        lambda: agents.create(
            {"team_id": team.id, "name": "Kyra", "slug": "kyra", "personality": personality}
        ),
    )
    await call("AgentRepository.get_by_id", lambda: agents.get_by_id(kyra.id, **t))
    await call("AgentRepository.get_or_raise", lambda: agents.get_or_raise(kyra.id, **t))
    await call("AgentRepository.get_by_slug", lambda: agents.get_by_slug("kyra", team_id=team.id))
    await call("AgentRepository.list_for_team", lambda: agents.list_for_team(team_id=team.id))
    await call("AgentRepository.list", lambda: agents.list(**t, slug="kyra"))
    await call("AgentRepository.count", lambda: agents.count(**t))
    await call("AgentRepository.update", lambda: agents.update(kyra.id, {"tagline": "Hi"}, **t))
    await call("AgentRepository.set_status", lambda: agents.set_status(kyra.id, "active", **t))
    await call("AgentRepository.dna", lambda: agents.dna(kyra.id, **t))

    chat = await call(
        "ConversationRepository.create",
        lambda: conversations.create({"team_id": team.id, "agent_id": kyra.id, "user_id": ada.id}),
    )
    first = await call(
        "ConversationRepository.add_message",
        lambda: conversations.add_message(chat.id, {"role": "user", "content": "Hello"}, **t),
    )
    await conversations.add_message(
        chat.id, {"role": "assistant", "content": "Hi", "agent_id": kyra.id}, **t
    )
    await call(
        "ConversationRepository.messages",
        lambda: conversations.messages(chat.id, limit=10, before=first.id, **t),
    )
    await call(
        "ConversationRepository.set_feedback",
        lambda: conversations.set_feedback(first.id, "positive", **t),
    )
    await call(
        "ConversationRepository.list_for_user",
        lambda: conversations.list_for_user(ada.id, team_id=team.id),
    )
    await call(
        "ConversationRepository.update",
        lambda: conversations.update(chat.id, {"title": "Hello"}, **t),
    )
    await call("ConversationRepository.close", lambda: conversations.close(chat.id, **t))
    await call("ConversationRepository.get_by_id", lambda: conversations.get_by_id(chat.id, **t))
    await call(
        "ConversationRepository.get_or_raise", lambda: conversations.get_or_raise(chat.id, **t)
    )
    await call("ConversationRepository.list", lambda: conversations.list(**t, user_id=ada.id))
    await call("ConversationRepository.count", lambda: conversations.count(**t))

    def memory(content: str, hot: int, **fields: Any) -> dict[str, Any]:
        return {
            "team_id": team.id,
            "memory_type": MemoryType.SEMANTIC,
            "content": content,
            "embedding": unit_vector(hot),
            **fields,
        }

    tea = await call(
        "MemoryRepository.create",
        lambda: memories.create(
            memory(
                "Ada likes tea", 0, agent_id=kyra.id, source_conversation_id=chat.id, tags=["tea"]
            )
        ),
    )
    cake = await memories.create(memory("Ada likes cake", 1))
    bread = await memories.create(memory("Ada likes bread", 3))
    await call(
        "MemoryRepository.add_many",
        lambda: memories.add_many([memory(f"fact {n}", n, tags=["bulk"]) for n in range(3)]),
    )
    await call(
        "MemoryRepository.remember",
        lambda: memories.remember("Ada lives in Lisbon", MemoryType.SEMANTIC, team_id=team.id),
    )
    await call("MemoryRepository.recall", lambda: memories.recall("Lisbon", team_id=team.id))
    await call(
        "MemoryRepository.search_by_embedding",
        lambda: memories.search_by_embedding(
            unit_vector(0),
            team_id=team.id,
            agent_id=kyra.id,
            user_id=ada.id,
            memory_types=[MemoryType.SEMANTIC],
            limit=5,
            min_similarity=0.1,
        ),
    )
    await call(
        "MemoryRepository.find_similar",
        lambda: memories.find_similar(unit_vector(0), team_id=team.id),
    )
    await call(
        "MemoryRepository.retrieve",
        lambda: memories.retrieve(
            "tea", team_id=team.id, query_embedding=unit_vector(0), record_access=True
        ),
    )
    await call(
        "MemoryRepository.context_for",
        lambda: memories.context_for("tea", team_id=kyra.team_id, agent_id=kyra.id),
    )
    await call("MemoryRepository.get", lambda: memories.get(tea.id, team_id=team.id))
    await call("MemoryRepository.get_by_id", lambda: memories.get_by_id(tea.id, **t))
    await call("MemoryRepository.get_or_raise", lambda: memories.get_or_raise(tea.id, **t))
    await call("MemoryRepository.list", lambda: memories.list(**t, memory_type="semantic"))
    await call("MemoryRepository.count", lambda: memories.count(**t))
    await call("MemoryRepository.column_dimensions", memories.column_dimensions)
    await call(
        "MemoryRepository.update",
        lambda: memories.update(tea.id, {"importance": 8}, **t, actor="ops", reason="why"),
    )
    await call("MemoryRepository.pin", lambda: memories.pin(tea.id, **t))
    await call("MemoryRepository.unpin", lambda: memories.unpin(tea.id, **t))
    await call("MemoryRepository.set_tier", lambda: memories.set_tier(tea.id, MemoryTier.HOT, **t))
    await call("MemoryRepository.relate", lambda: memories.relate(tea.id, cake.id, **t))
    await call(
        "MemoryRepository.mark_contradiction",
        lambda: memories.mark_contradiction(tea.id, cake.id, **t),
    )
    await call("MemoryRepository.update_access", lambda: memories.update_access([tea.id], **t))
    await call("MemoryRepository.add_tags", lambda: memories.add_tags(tea.id, ["drinks"], **t))
    await call("MemoryRepository.remove_tags", lambda: memories.remove_tags(tea.id, ["tea"], **t))
    await call("MemoryRepository.tags", lambda: memories.tags(tea.id, **t))
    await call("MemoryRepository.with_tag", lambda: memories.with_tag("bulk", team_id=team.id))
    newer = await call(
        "MemoryRepository.supersede",
        lambda: memories.supersede(
            bread.id, memory("Ada likes pie", 2, tags=["food"]), reason="changed"
        ),
    )
    await call("MemoryRepository.archive", lambda: memories.archive(newer.id, **t))
    await call("MemoryRepository.expire", lambda: memories.expire(now=datetime.now(UTC), **t))
    await call("MemoryRepository.history", lambda: memories.history(tea.id, **t))
    await call(
        "MemoryRepository.content_at", lambda: memories.content_at(tea.id, datetime.now(UTC), **t)
    )
    await call("export_memories", lambda: collect(export_memories(session, team.id)))
    await call("MemoryRepository.delete", lambda: memories.delete(tea.id, **t))
    await call("ConversationRepository.delete", lambda: conversations.delete(chat.id, **t))
    await call(
        "TeamRepository.remove_member", lambda: teams.remove_member(grace.id, team_id=team.id)
    )
    await call("AgentRepository.delete", lambda: agents.delete(kyra.id, **t, cascade=True))
    return {"team": team.id, "owner": ada.id}


REPOSITORIES = (
    UserRepository,
    TeamRepository,
    StatsRepository,
    AgentRepository,
    ConversationRepository,
    MemoryRepository,
)
NOT_STATEMENTS = {
    "writing",
    "writing_as",
    "build",
    "entity",
    "embedder",
    "model",
    "create_model",
    "update_model",
}
"""Public members that send no statement of their own."""


def public_methods() -> set[str]:
    """`Repository.method` for every public method of the repositories."""
    return {
        f"{repository.__name__}.{name}"
        for repository in REPOSITORIES
        for name in dir(repository)
        if not name.startswith("_")
        and name not in NOT_STATEMENTS
        and callable(getattr(repository, name))
    }


async def collect(lines: AsyncIterator[str]) -> list[str]:
    return [line async for line in lines]


async def test_every_statement_on_a_team_table_names_the_team(
    router_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    factory = get_session_factory(router_engine)
    with capturing(router_engine, monkeypatch) as capture:
        async with factory() as session:
            made = await workload(session, capture)
            await session.commit()
        # A session scoped to the team inserts in bulk with executemany instead of COPY.
        async with scope_to_team(factory(), made["team"]) as session:
            capture.step = "MemoryRepository.add_many (scoped)"
            await MemoryRepository(session).add_many(
                [
                    {
                        "team_id": made["team"],
                        "memory_type": "semantic",
                        "content": "x",
                        "tags": ["y"],
                    }
                ]
            )
            await session.commit()
        async with factory() as session:
            capture.step = "TeamRepository.delete"
            await TeamRepository(session).delete(made["team"])
            capture.called |= {"TeamRepository.delete", "UserRepository.delete"}
            capture.step = "UserRepository.delete"
            await UserRepository(session).delete(made["owner"])
            await session.commit()

    steps = {step for step, _ in capture.sent}
    assert {"MemoryRepository.add_many", "MemoryRepository.add_many (scoped)"} <= steps
    assert public_methods() - capture.called == set()
    assert any(sql.startswith("COPY memory_tag") for _, sql in capture.sent)
    assert capture.unrouted() == []
    # The exemption is not idle: those calls do read every team's rows.
    assert all(
        unrouted(sql)
        for step, sql in capture.sent
        if step in CROSS_TEAM and "team_membership" in sql
    )


UNROUTED: dict[str, Callable[[AsyncSession], Awaitable[Any]]] = {
    "select by id": lambda s: s.exec(select(Memory).where(Memory.id == uuid.uuid4())),
    "join without the team": lambda s: s.exec(
        text(
            "SELECT m.* FROM memory AS m JOIN memory_tag AS t ON t.memory_id = m.id"
            " WHERE m.team_id = CAST(:t AS uuid)"
        ),
        params={"t": uuid.uuid4()},
    ),
    "insert without team_id": lambda s: s.exec(
        text(
            "INSERT INTO memory_log (memory_id, action, changed_by) SELECT id, 'x', 'y'"
            " FROM memory WHERE false"
        )
    ),
    "one-argument function": lambda s: s.exec(
        text("SELECT update_memory_access(CAST(:ids AS uuid[]))"), params={"ids": []}
    ),
}


@pytest.mark.parametrize("case", UNROUTED)
async def test_a_statement_that_does_not_name_the_team_is_caught(
    session: AsyncSession, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    with capturing(engine, monkeypatch) as capture:
        capture.step = case
        await UNROUTED[case](session)
    assert capture.unrouted() != []
