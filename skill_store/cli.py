"""The `skill-store` command: the demo, the schema, and the store from the terminal."""

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import sqlalchemy as sa
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store import demo as demo_data
from skill_store.database import (
    database_url,
    ensure_migrated,
    get_engine,
    get_session_factory,
    migrate,
    revisions,
    run_alembic,
)
from skill_store.embedder_migration import (
    BATCH_SIZE,
    EmbeddingMigrationProgress,
    EmbeddingMigrationReport,
    abandon_embedding_migration,
    migrate_embeddings,
)
from skill_store.embeddings import embedder_from_settings
from skill_store.errors import NotFoundError, SkillStoreError
from skill_store.maintenance import MaintenanceReport
from skill_store.maintenance import maintain as run_maintenance
from skill_store.models import Agent, Memory, MemoryType, Team
from skill_store.portability import ImportCounts, export_memories, import_memories
from skill_store.repositories import (
    AgentRepository,
    MemoryRepository,
    StatsRepository,
    TeamRepository,
)
from skill_store.repositories.base import translated_errors
from skill_store.settings import get_settings, mask_password
from skill_store.team_indexes import (
    EXACT_SEARCH_MAX_ROWS,
    TeamIndexes,
    finish_index_builds,
    index_large_teams,
)

if TYPE_CHECKING:
    from alembic.config import Config

# alembic is imported by the commands that migrate or compare the schema: `--help` and the
# commands that read the store start without it.

T = TypeVar("T")
# The signals of `MemoryRepository.retrieve`, abridged for narrow terminals.
SIGNAL_COLUMNS = ("sem", "rec", "imp", "cont", "rel")

app = typer.Typer(
    help="Users, teams, agents with a typed identity, and their long-term memory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
db = typer.Typer(help="Create, upgrade and inspect the database schema.", no_args_is_help=True)
teams = typer.Typer(help="Teams in the store.", no_args_is_help=True)
agents = typer.Typer(help="A team's agents and their AgentDNA.", no_args_is_help=True)
memories = typer.Typer(help="A team's memories: list, search, history, import, export.")
memories.info.no_args_is_help = True
embeddings = typer.Typer(
    help="The memories' vectors: move them to another embedder.", no_args_is_help=True
)
for name, group in (
    ("db", db),
    ("teams", teams),
    ("agents", agents),
    ("memories", memories),
    ("embeddings", embeddings),
):
    app.add_typer(group, name=name)

console = Console()
err_console = Console(stderr=True)
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TeamSlug = Annotated[str, typer.Option("--team", help="The team's slug.")]
MAX_LIMIT = 10_000
"""The most memories `memories list` and `memories search` print (`export` has no limit)."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise _fail(f"--limit must be between 1 and {MAX_LIMIT}, got {limit}")


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit status 1."""
    try:
        yield
    except ValidationError as error:
        settings = error.title == "Settings"

        def field(loc: tuple[int | str, ...]) -> str:
            name = ".".join(map(str, loc)) or "value"
            return name.upper() if settings else name  # settings come from upper-case variables

        problems = "; ".join(
            f"{field(problem['loc'])}: {problem['msg']}" for problem in error.errors()
        )
        raise _fail(f"invalid {'configuration' if settings else error.title}: {problems}") from None
    except (SkillStoreError, OSError) as error:
        raise _fail(str(error)) from None
    except Exception as error:
        from alembic.util import CommandError

        if isinstance(error, CommandError):  # e.g. a revision alembic cannot find
            raise _fail(str(error)) from None
        raise


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


def _print_document(data: dict[str, Any], as_json: bool) -> None:
    """One JSON document: plain for scripts, highlighted for people."""
    if as_json:
        _print_json(data)
    else:
        console.print_json(data=data)


def _on_database(action: Callable[["Config"], T]) -> T:
    """Run `action` with an alembic config on the configured database, printing where it is."""
    with _user_errors():
        url = database_url()
        typer.echo(f"database: {mask_password(url)}")
        return asyncio.run(run_alembic(action, url))


def _in_session(work: Callable[[AsyncSession], Awaitable[T]], *, upgrade: bool = False) -> T:
    """Run `work` in one committed transaction on the configured database.

    Team indexes that the writes made due are built before the command ends.
    """

    async def main() -> T:
        engine = await get_engine()
        try:
            await (migrate(engine) if upgrade else ensure_migrated(engine))
            async with get_session_factory(engine)() as session:
                result = await work(session)
                async with translated_errors():  # e.g. the connection lost meanwhile
                    await session.commit()
            await finish_index_builds(engine)
            return result
        finally:
            await engine.dispose()

    with _user_errors():
        return asyncio.run(main())


async def _team(session: AsyncSession, slug: str) -> Team:
    return await TeamRepository(session).get_by_slug_or_raise(slug)


async def _agent(session: AsyncSession, team: Team, slug: str) -> Agent:
    agent = await AgentRepository(session).get_by_slug(team.id, slug)
    if agent is None:
        raise NotFoundError("agent", f"{slug!r} in team {team.slug!r}")
    return agent


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(value) for value in row))
    return table


def _excerpt(content: str, width: int = 70) -> str:
    return content if len(content) <= width else content[: width - 1] + "…"


# -- the demo ------------------------------------------------------------------------------


@app.command()
def demo(
    reset: Annotated[
        bool, typer.Option("--reset", help="Delete and rebuild the demo team.")
    ] = False,
) -> None:
    """Create a demo team with agents, a conversation and memories; search and supersede one."""

    async def work(session: AsyncSession) -> demo_data.DemoReport | None:
        if await demo_data.find_demo_team(session) is not None:
            if not reset:
                return None
            await demo_data.remove_demo(session)
        return await demo_data.build_demo(session, embedder_from_settings())

    with _user_errors():
        console.print(f"database: {mask_password(database_url())}", soft_wrap=True)
    report = _in_session(work, upgrade=True)
    if report is None:
        console.print(
            f"The demo team '{demo_data.TEAM_SLUG}' already exists:"
            " `skill-store demo --reset` rebuilds it."
        )
        return
    _print_demo(report)


def _print_demo(report: demo_data.DemoReport) -> None:
    console.print(
        f"\nTeam [bold]{report.team.name}[/] ({report.team.slug}), owner {report.owner.email}"
    )
    console.print(
        _table(
            "Agents",
            ["agent", "tone", "verbosity", "model", "temperature", "own skills"],
            [
                [
                    f"{agent.avatar_emoji} {agent.name} ({agent.slug})",
                    agent.personality.tone,
                    agent.personality.verbosity,
                    agent.model.model_name,
                    agent.model.temperature,
                    ", ".join(agent.custom_skill_names),
                ]
                for agent in report.agents
            ],
        )
    )
    conversation = report.conversation
    console.print(
        f"Conversation '{conversation.title}': {conversation.message_count} messages,"
        f" {conversation.total_input_tokens} input and {conversation.total_output_tokens}"
        " output tokens (counted by the database)"
    )
    console.print(f"{report.memories} memories with embeddings and tags")
    console.print(
        _table(
            f'Retrieved: "{report.query}" (Kyra, about Ada)',
            ["#", "score", *SIGNAL_COLUMNS, "memory"],
            [
                [
                    rank,
                    f"{hit.score:.3f}",
                    *(f"{value:.2f}" for value in hit.signals.model_dump().values()),
                    _excerpt(hit.content),
                ]
                for rank, hit in enumerate(report.hits, start=1)
            ],
        )
    )
    console.print(
        _table(
            f"Superseded by version {report.successor.version}: {report.successor.content}",
            ["action", "by", "reason", "content"],
            [
                [log.action, log.changed_by, log.reason or "", log.new_content or ""]
                for log in report.history
            ],
        )
    )
    console.print(
        "Next: `skill-store agents show --team demo kyra`,"
        ' `skill-store memories search --team demo "climbing"`, `skill-store stats`'
    )


# -- the schema ----------------------------------------------------------------------------


@db.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the schema to REVISION (by default the latest)."""
    from alembic import command

    def action(config: "Config") -> tuple[str | None, str | None]:
        command.upgrade(config, revision)
        return revisions(config)

    current, _head = _on_database(action)
    typer.echo(f"schema at revision {current}")


@db.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; `base` removes the schema.")],
) -> None:
    """Downgrade the schema to REVISION."""
    from alembic import command

    def action(config: "Config") -> tuple[str | None, str | None]:
        command.downgrade(config, revision)
        return revisions(config)

    current, _head = _on_database(action)
    typer.echo(f"schema at revision {current or 'base (empty)'}")


@db.command()
def current() -> None:
    """Show the schema's revision and whether it is the latest."""
    current, head = _on_database(revisions)
    if current is None:
        raise _fail(f"the schema is not migrated (latest is {head}): run `skill-store db upgrade`")
    state = "latest" if current == head else f"behind {head}: run `skill-store db upgrade`"
    typer.echo(f"schema at revision {current} ({state})")


@db.command()
def check() -> None:
    """Compare the schema with the models; exit 1, listing the differences, if they differ.

    Only the package's tables, indexes, constraints and types are compared: an application's
    own tables in the same database are not drift.
    """
    from alembic import command
    from alembic.util import AutogenerateDiffsDetected

    def differences(config: "Config") -> list[Any]:
        try:
            command.check(config)
        except AutogenerateDiffsDetected as drift:
            return drift.diffs
        return []

    found = [line for diff in _on_database(differences) for line in _describe_difference(diff)]
    if found:
        listed = "".join(f"\n  {line}" for line in found)
        raise _fail(f"the schema differs from the models:{listed}")
    typer.echo("no drift: the schema matches the models")


_IN_MODELS = "in the models, not in the database"
_IN_DATABASE = "in the database, not in the models"
_WHERE = {"add": _IN_MODELS, "create": _IN_MODELS, "remove": _IN_DATABASE, "drop": _IN_DATABASE}


def _object_name(part: Any) -> str:
    if isinstance(part, sa.Column):
        return f"{part.table.name}.{part.name}"
    if isinstance(part, sa.Index | sa.Constraint) and part.table is not None:
        return f"{part.name} on {part.table.name}"
    return str(part.name if isinstance(part, sa.Table) else part)


def _describe_difference(diff: tuple[Any, ...] | list[tuple[Any, ...]]) -> list[str]:
    """Word one difference that alembic's comparison found, one line for each change.

    Args:
        diff: An entry of `AutogenerateDiffsDetected.diffs`: a tuple such as
            `("add_table", table)`, or a list of a column's changes
            (`("modify_nullable", schema, table, column, existing, database, models)`).

    Returns:
        Lines such as `table widget: in the models, not in the database` or
        `column memory.content: nullable is True in the database, False in the models`.
    """
    if isinstance(diff, list):
        return [line for change in diff for line in _describe_difference(change)]
    kind, *parts = diff
    if kind.startswith("modify_"):
        _schema, table, column, _existing, database, models = parts
        what = kind.removeprefix("modify_")
        return [
            f"column {table}.{column}: {what} is {database} in the database, {models} in the models"
        ]
    objects = [
        part for part in parts if isinstance(part, sa.Table | sa.Column | sa.Index | sa.Constraint)
    ]
    named = ", ".join(_object_name(part) for part in objects or parts if part is not None)
    verb, _, what = kind.partition("_")
    if verb in _WHERE:
        return [
            f"{'foreign key' if what == 'fk' else what.replace('_', ' ')} {named}: {_WHERE[verb]}"
        ]
    return [f"{kind.replace('_', ' ')}: {named}"]


@db.command()
def index(
    min_rows: Annotated[
        int, typer.Option(min=0, help="Index teams with more searchable memories than this.")
    ] = EXACT_SEARCH_MAX_ROWS,
) -> None:
    """Build the vector index of each large team (its searches are exact until then)."""

    async def main() -> TeamIndexes:
        engine = await get_engine()
        try:
            await ensure_migrated(engine)
            return await index_large_teams(engine, min_rows=min_rows)
        finally:
            await engine.dispose()

    with _user_errors():
        done = asyncio.run(main())
    typer.echo(f"built {len(done.built)} team indexes, dropped {done.dropped}")


@app.command()
def maintain(as_json: AsJson = False) -> None:
    """Apply retention and expiry, build due team indexes, refresh statistics (for cron).

    Each team's conversations idle past its retention are deleted with their messages (the
    memories learnt from them stay, unlinked); memories past their expiry are archived;
    team indexes that are due are built and those no team needs dropped; the tables are
    vacuumed and analyzed. A run that finds another one going does nothing.
    """

    async def main() -> MaintenanceReport:
        engine = await get_engine()
        try:
            await ensure_migrated(engine)
            return await run_maintenance(engine)
        finally:
            await engine.dispose()

    with _user_errors():
        report = asyncio.run(main())
    if as_json:
        _print_json(dataclasses.asdict(report))
    elif not report.ran:
        typer.echo("another maintenance run is going: nothing done")
    else:
        typer.echo(
            f"deleted {report.conversations_deleted} conversations past retention"
            f" ({report.messages_deleted} messages; {report.memories_unlinked} memories"
            f" unlinked), archived {report.memories_expired} expired memories, built"
            f" {len(report.indexes_built)} team indexes, dropped {report.indexes_dropped},"
            f" analyzed {len(report.tables_analyzed)} tables in {report.seconds:.1f} s"
        )


@db.command()
def url() -> None:
    """Show the database URL (password masked), starting the embedded server if it is used."""
    with _user_errors():
        settings = get_settings()
        resolved = database_url(settings)
    where = "" if settings.database_url else f" (embedded server in {settings.embedded_data_dir})"
    typer.echo(f"{mask_password(resolved)}{where}")


# -- reading the store ---------------------------------------------------------------------


@app.command()
def stats(as_json: AsJson = False) -> None:
    """Rows per table, memories per team, type, tier and status, and index sizes."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        store = StatsRepository(session)
        return {
            "rows": await store.rows_per_table(),
            "memories": [
                {
                    "team": group.team,
                    "type": group.memory_type,
                    "tier": group.tier,
                    "status": group.status,
                    "count": group.count,
                }
                for group in await store.memory_groups()
            ],
            "index_bytes": await store.index_sizes(),
        }

    result = _in_session(work)
    if as_json:
        _print_json(result)
        return
    console.print(_table("Rows", ["table", "rows"], [[k, v] for k, v in result["rows"].items()]))
    console.print(
        _table(
            "Memories",
            ["team", "type", "tier", "status", "count"],
            [list(group.values()) for group in result["memories"]],
        )
    )
    console.print(
        _table(
            "Indexes",
            ["index", "size"],
            [[name, f"{size / 1024:.0f} KiB"] for name, size in result["index_bytes"].items()],
        )
    )


@teams.command("list")
def list_teams(as_json: AsJson = False) -> None:
    """Every team with its number of members, agents and memories."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        return [
            {
                "slug": counted.team.slug,
                "name": counted.team.name,
                "members": counted.members,
                "agents": counted.agents,
                "memories": counted.memories,
            }
            for counted in await TeamRepository(session).with_counts()
        ]

    result = _in_session(work)
    if as_json:
        _print_json(result)
        return
    columns = ["slug", "name", "members", "agents", "memories"]
    console.print(_table("Teams", columns, [list(team.values()) for team in result]))


@agents.command("list")
def list_agents(team: TeamSlug, as_json: AsJson = False) -> None:
    """The team's agents."""

    async def work(session: AsyncSession) -> list[Agent]:
        return list(await AgentRepository(session).list_for_team((await _team(session, team)).id))

    result = _in_session(work)
    if as_json:
        _print_json([agent.model_dump(mode="json") for agent in result])
        return
    rows = [
        [a.slug, a.name, a.status.value, a.personality.tone, a.model.model_name] for a in result
    ]
    console.print(_table(f"Agents of {team}", ["slug", "name", "status", "tone", "model"], rows))


@agents.command("show")
def show_agent(
    team: TeamSlug,
    agent: Annotated[str, typer.Argument(help="The agent's slug.")],
    as_json: AsJson = False,
) -> None:
    """The agent's AgentDNA: identity, personality, skills, model, memory and boundaries."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        found = await _agent(session, await _team(session, team), agent)
        dna = await AgentRepository(session).dna(found.id, team_id=found.team_id)
        return dna.model_dump(mode="json")

    _print_document(_in_session(work), as_json)


@memories.command("list")
def list_memories(
    team: TeamSlug,
    memory_type: Annotated[
        MemoryType | None, typer.Option("--type", help="Only memories of this type.")
    ] = None,
    limit: Annotated[
        int, typer.Option(help=f"At most this many (1 to {MAX_LIMIT}), newest first.")
    ] = 50,
    as_json: AsJson = False,
) -> None:
    """The team's memories, newest first."""
    _check_limit(limit)

    async def work(session: AsyncSession) -> list[Memory]:
        team_id = (await _team(session, team)).id
        filters: dict[str, Any] = {} if memory_type is None else {"memory_type": memory_type}
        found = await MemoryRepository(session).list(
            limit, team_id=team_id, newest_first=True, **filters
        )
        return list(found)

    result = _in_session(work)
    if as_json:
        _print_json([_memory_json(memory) for memory in result])
        return
    console.print(_memory_table(f"Memories of {team}", result))


def _memory_json(memory: Memory, **extra: Any) -> dict[str, Any]:
    return memory.model_dump(mode="json", exclude={"embedding"}) | extra


def _memory_table(title: str, rows: list[Memory]) -> Table:
    return _table(
        title,
        ["id", "type", "importance", "tier", "status", "content"],
        [
            [
                m.id,
                m.memory_type.value,
                m.importance,
                m.tier.value,
                m.status.value,
                _excerpt(m.content),
            ]
            for m in rows
        ],
    )


MemoryId = Annotated[uuid.UUID, typer.Argument(help="The memory's id.")]


@memories.command("show")
def show_memory(team: TeamSlug, memory_id: MemoryId, as_json: AsJson = False) -> None:
    """One memory of the team, with its tags."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        repository = MemoryRepository(session)
        memory = await repository.get(memory_id, (await _team(session, team)).id)
        return _memory_json(memory, tags=await repository.tags(memory.id, team_id=memory.team_id))

    _print_document(_in_session(work), as_json)


@memories.command("history")
def memory_history(team: TeamSlug, memory_id: MemoryId, as_json: AsJson = False) -> None:
    """The audit trail of one memory of the team, oldest first."""

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        repository = MemoryRepository(session)
        team_id = (await _team(session, team)).id
        await repository.get(memory_id, team_id)
        history = await repository.history(memory_id, team_id=team_id)
        return [log.model_dump(mode="json") for log in history]

    result = _in_session(work)
    if as_json:
        _print_json(result)
        return
    rows = [
        [
            log["created_at"],
            log["action"],
            log["changed_by"],
            log["reason"] or "",
            log["new_content"] or "",
        ]
        for log in result
    ]
    console.print(_table("History", ["when", "action", "by", "reason", "content"], rows))


@memories.command("search")
def search_memories(
    team: TeamSlug,
    query: Annotated[str, typer.Argument(help="What to look for, in words.")],
    agent: Annotated[str | None, typer.Option(help="As this agent (its slug) sees them.")] = None,
    limit: Annotated[int, typer.Option(help=f"At most this many results (1 to {MAX_LIMIT}).")] = 10,
    as_json: AsJson = False,
) -> None:
    """The team's memories for QUERY, ranked as `retrieve` ranks them, with each signal.

    Vector recall (QUERY embedded with the configured embedder) fused with full-text recall;
    scored with the agent's retrieval weights (the defaults without --agent). The columns
    sem, rec, imp, cont and rel are the semantic, recency, importance, continuity and
    relationship signals; score is their weighted sum. Pinned memories come first.
    """
    _check_limit(limit)

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        found = await _team(session, team)
        agent_id = (await _agent(session, found, agent)).id if agent else None
        hits = await MemoryRepository(session).retrieve(
            query, team_id=found.id, agent_id=agent_id, limit=limit
        )
        return [hit.model_dump(mode="json", exclude={"embedding"}) for hit in hits]

    result = _in_session(work)
    if as_json:
        _print_json(result)
        return
    rows = [
        [
            rank,
            f"{hit['score']:.3f}",
            *(f"{value:.2f}" for value in hit["signals"].values()),
            "yes" if hit["is_pinned"] else "",
            hit["id"],
            _excerpt(hit["content"]),
        ]
        for rank, hit in enumerate(result, start=1)
    ]
    columns = ["#", "score", *SIGNAL_COLUMNS, "pinned", "id", "content"]
    console.print(_table(f'Search "{query}"', columns, rows))


@contextmanager
def _import_progress() -> Iterator[Callable[[int, int], None]]:
    """Report (memories written, memories to write) on stderr: a bar on a terminal, else lines."""
    if not err_console.is_terminal:
        yield lambda done, total: typer.echo(f"importing {done} / {total} memories", err=True)
        return
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("importing", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@memories.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="JSON Lines: one memory per line.", exists=True)],
    team: TeamSlug,
    batch_size: Annotated[int, typer.Option(help="Memories per COPY batch.")] = 1000,
    update_existing: Annotated[
        bool,
        typer.Option(
            "--update-existing",
            help="Restore the memories with the lines' ids as the lines hold them (else skip).",
        ),
    ] = False,
) -> None:
    """Add memories from a JSON Lines file; lines without an embedding are embedded first.

    Every line is checked before anything is written; a bad line is reported with its number
    and nothing is imported. A line with the id of one of the team's memories (a file
    exported from the team) is skipped, or with --update-existing restores that memory: its
    fields and tags become the line's (a field the line leaves out, its default), and a line
    without an embedding is embedded. A line that would change a memory's type, agent, user,
    source or creation date is refused.
    Progress goes to stderr: a bar on a terminal, else a line a batch.

    A file that is large beside the team is loaded beside the team's vector index, which is
    then rebuilt to hold it before the command ends (its searches stay right meanwhile); a
    team the file takes past 500 memories gets its index the same way.
    """
    if batch_size < 1:
        raise _fail(f"--batch-size must be at least 1, got {batch_size}")

    async def work(session: AsyncSession) -> ImportCounts:
        found = await _team(session, team)
        with _import_progress() as on_progress:
            return await import_memories(
                session,
                file,
                found.id,
                embedder_from_settings(),
                batch_size=batch_size,
                on_existing="update" if update_existing else "skip",
                on_progress=on_progress,
            )

    counts = _in_session(work)
    already = f"; updated {counts.updated}" if update_existing else f"; skipped {counts.skipped}"
    console.print(
        f"imported {counts.added} memories into {team}{already} already there;"
        f" embedded {counts.embedded} lines without an embedding"
    )


@memories.command("export")
def export_command(
    team: TeamSlug,
    output: Annotated[
        Path | None, typer.Option(help="File to write; standard output if omitted.")
    ] = None,
) -> None:
    """Write the team's memories as JSON Lines that `memories import` reads back."""
    if output is not None and not output.parent.is_dir():
        raise _fail(f"cannot write {output}: {output.parent} is not a folder")

    async def work(session: AsyncSession) -> list[str]:
        found = await _team(session, team)
        return [line async for line in export_memories(session, found.id)]

    lines = _in_session(work)
    if output is None:
        for line in lines:
            typer.echo(line)
        return
    with _user_errors():
        output.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    console.print(f"exported {len(lines)} memories to {output}")


# -- the embedder --------------------------------------------------------------------------


def _left(progress: EmbeddingMigrationProgress) -> str:
    if progress.eta is None:
        return ""
    minutes, seconds = divmod(round(progress.eta), 60)
    return f"about {minutes} min {seconds} s left" if minutes else f"about {seconds} s left"


@contextmanager
def _migration_progress() -> Iterator[Callable[[EmbeddingMigrationProgress], None]]:
    """Report an embedder migration's progress on stderr: a bar on a terminal, else lines."""
    if not err_console.is_terminal:

        def line(progress: EmbeddingMigrationProgress) -> None:
            typer.echo(
                f"embedded {progress.done} / {progress.total} memories,"
                f" {progress.rate:.0f}/s, {_left(progress)}",
                err=True,
            )

        yield line
        return
    columns = (
        TextColumn("embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}/s {task.fields[left]}"),
    )
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("embedding", total=None, rate="0", left="")
        yield lambda done: progress.update(
            task,
            completed=done.done,
            total=done.total,
            rate=f"{done.rate:.0f}",
            left=_left(done),
        )


@embeddings.command("migrate")
def migrate_embeddings_command(
    team: Annotated[
        str | None,
        typer.Option("--team", help="Only this team (its slug), if the dimension stays."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Memories per call of the embedder and per transaction.")
    ] = BATCH_SIZE,
    as_json: AsJson = False,
) -> None:
    """Embed every memory again with the configured embedder, then switch to the new vectors.

    The embedder is the one the settings name (EMBEDDING_MODEL, EMBEDDING_DIMENSIONS, ...);
    its dimension may differ from the store's. Searches go on meanwhile, with the old
    vectors until the switch (one short transaction at the end), the new ones afterwards:
    restart the store's users with the new settings then. Progress goes to stderr. Stopped
    or killed, run it again: it resumes, keeping the batches written. --team moves one team
    only, and only if the dimension stays.
    """
    if batch_size < 1:
        raise _fail(f"--batch-size must be at least 1, got {batch_size}")

    async def main() -> EmbeddingMigrationReport:
        engine = await get_engine()
        try:
            await ensure_migrated(engine)
            team_id = None
            if team is not None:
                async with get_session_factory(engine)() as session:
                    team_id = (await _team(session, team)).id
            embedder = embedder_from_settings()
            with _migration_progress() as on_progress:
                return await migrate_embeddings(
                    engine,
                    embedder,
                    team_id=team_id,
                    batch_size=batch_size,
                    on_progress=on_progress,
                )
        finally:
            await engine.dispose()

    with _user_errors():
        report = asyncio.run(main())
    if as_json:
        _print_json(dataclasses.asdict(report))
        return
    models = ", ".join(repr(model) if model else "unknown" for model in report.previous_models)
    previous = f"{models} ({report.previous_dimensions} dimensions)".strip()
    typer.echo(
        f"moved the memories of {team or 'every team'} from {previous} to {report.model!r}"
        f" ({report.dimensions} dimensions): {report.embedded} embedded in"
        f" {report.embed_calls} calls, {report.copied} carried over, {report.resumed} done by"
        f" an earlier run; {report.switched} vectors switched in one transaction (writes"
        f" waited {report.switch_seconds:.2f} s); team indexes built before the switch:"
        f" {report.indexes_built}, after it: {report.indexes_rebuilt}; {report.seconds:.1f} s"
    )


@embeddings.command("abandon")
def abandon_embeddings_command() -> None:
    """Drop the embedder migration in progress; the memories keep the vectors they have."""

    async def main() -> bool:
        engine = await get_engine()
        try:
            await ensure_migrated(engine)
            return await abandon_embedding_migration(engine)
        finally:
            await engine.dispose()

    with _user_errors():
        dropped = asyncio.run(main())
    typer.echo(
        "abandoned the embedder migration" if dropped else "no embedder migration to abandon"
    )


class _LevelPrefix(logging.Formatter):
    """`warning: message`, as the command words its own errors."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def main() -> None:
    """Run the `skill-store` command; the package's warnings are `warning: …` lines on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(_LevelPrefix())
    logging.getLogger("skill_store").addHandler(handler)
    app()
