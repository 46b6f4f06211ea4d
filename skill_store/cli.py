"""The `skill-store` command: the demo, the schema, and the store from the terminal."""

import asyncio
import dataclasses
import json
import logging
import re
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import sqlalchemy as sa
import typer
from pydantic import BaseModel, ValidationError
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from typer._click import Context, HelpFormatter
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperArgument, TyperCommand, TyperGroup

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
from skill_store.errors import ConflictError, NotFoundError, SkillStoreError
from skill_store.maintenance import MaintenanceReport
from skill_store.maintenance import maintain as run_maintenance
from skill_store.models import (
    Agent,
    AgentCreate,
    AgentDNA,
    Memory,
    MemoryType,
    Team,
    TeamMembershipRead,
    TeamRead,
    UserCreate,
    UserRead,
    UserRole,
)
from skill_store.portability import ImportCounts, export_memories, import_memories
from skill_store.repositories import (
    AgentRepository,
    MemoryRepository,
    StatsRepository,
    TeamRepository,
    UserRepository,
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


def _value_name(parameter: Any) -> str:
    """What an argument or option takes, as help shows it: its metavar, or its name."""
    return str(parameter.metavar or parameter.name.upper())


def _format_parameters(command: Any, ctx: Context, formatter: HelpFormatter) -> None:
    """Arguments and options, each by the value it takes (`--team SLUG`), not its type."""
    arguments, options = [], []
    for parameter in command.get_params(ctx):
        record = parameter.get_help_record(ctx)
        if record is None:
            continue
        if isinstance(parameter, TyperArgument):
            arguments.append((_value_name(parameter), record[1]))
            continue
        names = ", ".join(parameter.opts)
        options.append(
            (names if parameter.is_flag else f"{names} {_value_name(parameter)}", record[1])
        )
    for title, rows in (("Arguments", arguments), ("Options", options)):
        if rows:
            with formatter.section(title):
                formatter.write_dl(rows)


class _Command(TyperCommand):
    """A command whose usage and help name what each argument and option takes."""

    def collect_usage_pieces(self, ctx: Context) -> list[str]:
        """`[OPTIONS] ID`: the arguments by name, an optional one in brackets."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for parameter in self.get_params(ctx):
            if isinstance(parameter, TyperArgument):
                name = _value_name(parameter)
                pieces.append(name if parameter.required else f"[{name}]")
        return pieces

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        """Arguments and options, by the values they take."""
        _format_parameters(self, ctx, formatter)


class _Group(TyperGroup):
    """A group of commands, each listed with the whole first sentence of its help.

    A usage error (a missing or unknown option, a bad value) is one line on stderr and exit
    status 1, as the command's other errors.
    """

    def format_options(self, ctx: Context, formatter: HelpFormatter) -> None:
        """Options, then the commands."""
        _format_parameters(self, ctx, formatter)
        self.format_commands(ctx, formatter)

    def format_commands(self, ctx: Context, formatter: HelpFormatter) -> None:
        """Each command and the first sentence of its help, whole."""
        rows = [
            (name, command.get_short_help_str(limit=sys.maxsize))
            for name, command in self.commands.items()
            if not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; as a program (`standalone_mode`), exit with its status."""
        run = dict(
            args=args,
            prog_name=prog_name,
            complete_var=complete_var,
            windows_expand_args=windows_expand_args,
            **extra,
        )
        if not standalone_mode:
            return super().main(standalone_mode=False, **run)
        try:
            status = super().main(standalone_mode=False, **run)
        except NoArgsIsHelpError as error:
            error.show()
            sys.exit(error.exit_code)
        except UsageError as error:
            where = f"; see `{error.ctx.command_path} --help`" if error.ctx else ""
            _fail_now(f"{error.format_message().rstrip('.')}{where}")
        except ClickException as error:
            _fail_now(error.format_message())
        except typer.Abort:
            _fail_now("aborted")
        sys.exit(status if isinstance(status, int) else 0)


def _group(help: str) -> typer.Typer:
    return typer.Typer(
        cls=_Group, help=help, no_args_is_help=True, add_completion=False, rich_markup_mode=None
    )


app = typer.Typer(
    cls=_Group,
    help=(
        "Users, teams, agents with a typed identity, and their long-term memory.\n\n"
        "It creates users, teams and agents, adds members, lists, searches, imports and"
        " exports memories, and moves their vectors to another embedder; it does not change"
        " or delete users, teams or agents, edit or delete memories, nor write conversations:"
        " the Python API does."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)
db = _group("Create, upgrade and inspect the database schema.")
users = _group("Users of the store.")
teams = _group("Teams and their members.")
agents = _group("A team's agents and their AgentDNA.")
memories = _group("A team's memories: list, show, search, history, import, export.")
embeddings = _group("The memories' vectors: move them to another embedder.")
for name, group in (
    ("db", db),
    ("users", users),
    ("teams", teams),
    ("agents", agents),
    ("memories", memories),
    ("embeddings", embeddings),
):
    app.add_typer(group, name=name)

console = Console()
err_console = Console(stderr=True)
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TeamSlug = Annotated[str, typer.Option("--team", metavar="SLUG", help="The team's slug.")]
Yes = Annotated[bool, typer.Option("--yes", help="Do it without asking.")]
MAX_LIMIT = 10_000
"""The most memories `memories list` and `memories search` print (`export` has no limit)."""
SHORT_ID = 8
"""Hexadecimal digits of the ids tables show, or more where a team's memories share them."""


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def _fail_now(message: str) -> NoReturn:
    """Say what went wrong in one line on stderr, and exit with status 1."""
    _fail(message)
    sys.exit(1)


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise _fail(f"--limit must be between 1 and {MAX_LIMIT}, got {limit}")


def _command(group: typer.Typer, name: str | None = None) -> Callable[[Callable[..., T]], Any]:
    """Register a command of `group` (named after its function, or `name`)."""
    return group.command(name, cls=_Command)


def _asked(question: str, refusal: str, yes: bool) -> bool:
    """Whether to go on: `--yes`, else the answer on the terminal (no by default).

    Raises:
        typer.Exit: Saying `refusal`, without a terminal to ask on.
    """
    if yes:
        return True
    if not sys.stdin.isatty():
        raise _fail(f"{refusal}: pass --yes to go on without a terminal to ask on")
    return typer.confirm(question, default=False)


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


def _print_made(made: BaseModel, as_json: bool, line: str) -> None:
    """What a command made: its fields as JSON with `--json`, else `line`."""
    if as_json:
        _print_json(made.model_dump(mode="json"))
    else:
        console.print(line, soft_wrap=True)


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
    agent = await AgentRepository(session).get_by_slug(slug, team_id=team.id)
    if agent is None:
        raise NotFoundError("agent", f"{slug!r} in team {team.slug!r}")
    return agent


async def _user(session: AsyncSession, email: str) -> UserRead:
    user = await UserRepository(session).get_by_email(email)
    if user is None:
        raise NotFoundError("user", f"with email {email}")
    return UserRead.model_validate(user)


# -- output --------------------------------------------------------------------------------


def _table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, fill: str | None = None
) -> Table:
    """A table of one line a row, no wider than the terminal.

    Every column is as wide as its widest value, none wrapped: where that is too wide,
    `fill`, the column of long text, takes the width left and cuts its values with an
    ellipsis.
    """
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in columns:
        if column == fill:
            table.add_column(column, ratio=1, no_wrap=True, overflow="ellipsis")
        else:
            table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*(str(value) for value in row))
    natural = console.measure(table, options=console.options.update_width(sys.maxsize))
    table.expand = fill is not None and natural.maximum > console.width
    return table


def _print_table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    empty: str,
    fill: str | None = None,
) -> None:
    """`_table`, or the line `empty` when there are no rows."""
    console.print(_table(title, columns, rows, fill=fill) if rows else empty)


def _words(value: Any) -> str:
    """A value as people read it: a moment to the second, lists joined, yes and no."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S %Z").rstrip()
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(_words(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def _fields(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(name, value in words) of each field that has a value, sub-models' as `model.name`."""
    for name, value in data.items():
        if isinstance(value, dict) and value and all(isinstance(key, str) for key in value):
            yield from _fields(value, f"{prefix}{name}.")
        elif value not in (None, "", [], {}):
            yield f"{prefix}{name}", _words(value)


def _print_model(model: BaseModel, as_json: bool, **extra: Any) -> None:
    """A model (and `extra` fields) as JSON with `--json`, else a field a line for people.

    Embeddings are left out of both.
    """
    data = model.model_dump(mode="json" if as_json else "python", exclude={"embedding"})
    data |= extra
    if as_json:
        _print_json(data)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True, style="bold")
    grid.add_column(overflow="fold")
    for name, value in _fields(data):
        grid.add_row(name, value)
    console.print(grid)


def _excerpt(content: str) -> str:
    """A content on one line, as a table shows it (and cuts it where it is too long)."""
    return " ".join(content.split())


# -- the demo ------------------------------------------------------------------------------


@_command(app)
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
            fill="own skills",
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
            fill="memory",
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
            fill="content",
        )
    )
    console.print(
        "Next: `skill-store agents show --team demo kyra`,"
        ' `skill-store memories search --team demo "climbing"`, `skill-store stats`'
    )


# -- the schema ----------------------------------------------------------------------------


@_command(db)
def upgrade(
    revision: Annotated[str, typer.Argument(metavar="REVISION", help="Target revision.")] = "head",
) -> None:
    """Upgrade the schema to REVISION (by default the latest)."""
    from alembic import command

    def action(config: "Config") -> tuple[str | None, str | None]:
        command.upgrade(config, revision)
        return revisions(config)

    current, _head = _on_database(action)
    typer.echo(f"schema at revision {current}")


class _DropsData(Exception):
    """A downgrade would remove these tables and columns (it was rolled back)."""

    def __init__(self, removed: str) -> None:
        super().__init__(removed)
        self.removed = removed


_COLUMNS = sa.text(
    "SELECT table_name, column_name FROM information_schema.columns"
    " WHERE table_schema = current_schema()"
)


def _removed(before: set[tuple[str, str]], after: set[tuple[str, str]]) -> str:
    """The tables and columns in `before` and not in `after`, in words; empty for none."""
    gone = before - after
    kept_tables = {table for table, _column in after}
    tables = sorted({table for table, _column in gone} - kept_tables)
    columns = sorted(f"{table}.{column}" for table, column in gone if table in kept_tables)
    said = [f"the table{'s' * (len(tables) > 1)} {', '.join(tables)}"] if tables else []
    said += [f"the column{'s' * (len(columns) > 1)} {', '.join(columns)}"] if columns else []
    return " and ".join(said)


@_command(db)
def downgrade(
    revision: Annotated[
        str, typer.Argument(metavar="REVISION", help="Target revision; `base` removes the schema.")
    ],
    yes: Yes = False,
) -> None:
    """Downgrade the schema to REVISION.

    A downgrade that removes tables or columns, and so their data (to `base`, every table),
    asks first, on the terminal; --yes goes on without asking. Without a terminal to ask on
    and without --yes, it is refused, and nothing is changed. A downgrade that removes no
    table nor column runs at once.
    """
    from alembic import command

    def action(config: "Config", allowed: bool) -> str | None:
        connection = config.attributes["connection"]
        before = set(connection.execute(_COLUMNS).tuples())
        command.downgrade(config, revision)
        removed = _removed(before, set(connection.execute(_COLUMNS).tuples()))
        if removed and not allowed:
            raise _DropsData(removed)  # rolls the downgrade back
        return revisions(config)[0]

    try:
        current = _on_database(lambda config: action(config, yes))
    except _DropsData as drops:
        said = f"the downgrade to {revision} removes {drops.removed}, with their data"
        if not _asked(f"{said[0].upper()}{said[1:]}. Downgrade?", said, yes):
            raise _fail("not downgraded") from None
        current = _on_database(lambda config: action(config, True))
    typer.echo(f"schema at revision {current or 'base (empty)'}")


@_command(db)
def current() -> None:
    """Show the schema's revision and whether it is the latest."""
    current, head = _on_database(revisions)
    if current is None:
        raise _fail(f"the schema is not migrated (latest is {head}): run `skill-store db upgrade`")
    state = "latest" if current == head else f"behind {head}: run `skill-store db upgrade`"
    typer.echo(f"schema at revision {current} ({state})")


@_command(db)
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


@_command(app)
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
    _print_table(
        "Memories",
        ["team", "type", "tier", "status", "count"],
        [list(group.values()) for group in result["memories"]],
        empty="no memories",
    )
    console.print(
        _table(
            "Indexes",
            ["index", "size"],
            [[name, f"{size / 1024:.0f} KiB"] for name, size in result["index_bytes"].items()],
        )
    )


@_command(db)
def index(
    min_rows: Annotated[
        int,
        typer.Option(
            min=0, metavar="N", help="Index teams with more searchable memories than this."
        ),
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


@_command(app)
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


@_command(db)
def url() -> None:
    """Show the database URL (password masked), starting the embedded server if it is used."""
    with _user_errors():
        settings = get_settings()
        resolved = database_url(settings)
    where = "" if settings.database_url else f" (embedded server in {settings.embedded_data_dir})"
    typer.echo(f"{mask_password(resolved)}{where}")


# -- users, teams and agents ---------------------------------------------------------------


def _password(from_stdin: bool) -> str:
    """The password: standard input's (less one final line break), or asked twice."""
    if from_stdin:
        return sys.stdin.read().removesuffix("\n").removesuffix("\r")
    if not sys.stdin.isatty():
        raise _fail(
            "no terminal to ask for the password on: pass it on stdin with --password-stdin"
        )
    return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))


@_command(users, "create")
def create_user(
    email: Annotated[str, typer.Argument(metavar="EMAIL", help="What they sign in with.")],
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="The name shown for them.")],
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password from standard input, instead of asking on the terminal.",
        ),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Create a user, with a password asked twice on the terminal (or read from stdin).

    The password is stored as its argon2 hash, and must be 8 characters or more.
    """
    password = _password(password_stdin)

    async def work(session: AsyncSession) -> UserRead:
        data = {"email": email, "display_name": name, "password": password}
        user = await UserRepository(session).create(UserCreate.model_validate(data))
        return UserRead.model_validate(user)

    user = _in_session(work)
    _print_made(user, as_json, f"created user {user.email} ({user.display_name})")


@_command(teams, "create")
def create_team(
    slug: Annotated[str, typer.Argument(metavar="SLUG", help="Its slug, which names it here.")],
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Its name.")],
    owner: Annotated[
        str, typer.Option("--owner", metavar="EMAIL", help="The email of the user who owns it.")
    ],
    as_json: AsJson = False,
) -> None:
    """Create a team, owned by a user, who becomes its first member (role owner)."""

    async def work(session: AsyncSession) -> TeamRead:
        owner_id = (await _user(session, owner)).id
        data = {"slug": slug, "name": name, "owner_id": owner_id}
        return TeamRead.model_validate(await TeamRepository(session).create(data))

    team = _in_session(work)
    _print_made(team, as_json, f"created team {team.slug} ({team.name}), owned by {owner}")


@_command(teams, "add-member")
def add_member(
    team: Annotated[str, typer.Argument(metavar="TEAM", help="The team's slug.")],
    email: Annotated[str, typer.Argument(metavar="EMAIL", help="The user's email.")],
    role: Annotated[
        UserRole,
        typer.Option(
            metavar="ROLE", help="Their role: owner, admin, member or viewer.", show_default=True
        ),
    ] = UserRole.MEMBER,
    as_json: AsJson = False,
) -> None:
    """Make a user a member of a team."""

    async def work(session: AsyncSession) -> TeamMembershipRead:
        team_id = (await _team(session, team)).id
        user_id = (await _user(session, email)).id
        try:
            membership = await TeamRepository(session).add_member(
                user_id, team_id=team_id, role=role
            )
        except ConflictError as error:
            if error.constraint != "uq_team_membership":
                raise
            raise _fail(f"{email} is already a member of team {team}") from None
        return TeamMembershipRead.model_validate(membership)

    membership = _in_session(work)
    _print_made(membership, as_json, f"added {email} to team {team} as {membership.role.value}")


@_command(teams, "list")
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
    _print_table(
        "Teams",
        ["slug", "name", "members", "agents", "memories"],
        [list(team.values()) for team in result],
        empty="no teams: `skill-store teams create` makes one",
        fill="name",
    )


def _agent_file(path: Path | None) -> dict[str, Any]:
    """The JSON object of an AgentDNA file, or nothing without one."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _fail(f"{path} is not a JSON file: {error}") from None
    if not isinstance(data, dict):
        raise _fail(f"{path} does not hold a JSON object (an AgentDNA)")
    return data


@_command(agents, "create")
def create_agent(
    slug: Annotated[str, typer.Argument(metavar="SLUG", help="Its slug, unique in its team.")],
    team: TeamSlug,
    name: Annotated[str, typer.Option("--name", metavar="NAME", help="Its name.")],
    dna: Annotated[
        Path | None,
        typer.Option(
            "--dna",
            metavar="FILE",
            exists=True,
            dir_okay=False,
            help="A JSON file of its AgentDNA: personality, skills, model, memory, boundaries.",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Create an agent of a team, its identity from an AgentDNA file.

    The file is a JSON object of the fields `AgentCreate` takes, checked as the Python API
    checks them: an unknown key is refused, and an error names the field. The team, slug
    and name are the command's (a file that gives other ones is refused). Without a file,
    or without `personality` in it, the agent's system prompt template is empty; the other
    fields have their defaults.
    """
    given = {"slug": slug, "name": name}
    with _user_errors():
        document = _agent_file(dna)
    for key, value in given.items():
        if key in document and document[key] != value:
            raise _fail(f"the file's {key} {document[key]!r} is not the {key} given, {value!r}")
    if "team_id" in document:
        raise _fail("the file gives a team_id: its team is the one --team names")

    async def work(session: AsyncSession) -> AgentDNA:
        team_id = (await _team(session, team)).id
        data = {"personality": {"system_prompt_template": ""}, **document, **given}
        repository = AgentRepository(session)
        try:
            agent = await repository.create(
                AgentCreate.model_validate({**data, "team_id": team_id})
            )
        except ConflictError as error:
            if error.constraint != "uq_agent_team_slug":
                raise
            raise _fail(f"team {team} already has an agent with slug {slug!r}") from None
        return await repository.dna(agent.id, team_id=team_id)

    created = _in_session(work)
    _print_made(created, as_json, f"created agent {created.slug} ({created.name}) in team {team}")


@_command(agents, "list")
def list_agents(team: TeamSlug, as_json: AsJson = False) -> None:
    """The team's agents."""

    async def work(session: AsyncSession) -> list[Agent]:
        team_id = (await _team(session, team)).id
        return list(await AgentRepository(session).list_for_team(team_id=team_id))

    result = _in_session(work)
    if as_json:
        _print_json([AgentDNA.model_validate(agent).model_dump(mode="json") for agent in result])
        return
    rows = [
        [a.slug, a.name, a.status.value, a.personality.tone, a.model.model_name] for a in result
    ]
    _print_table(
        f"Agents of {team}",
        ["slug", "name", "status", "tone", "model"],
        rows,
        empty=f"team {team} has no agents",
        fill="name",
    )


@_command(agents, "show")
def show_agent(
    team: TeamSlug,
    agent: Annotated[str, typer.Argument(metavar="AGENT", help="The agent's slug.")],
    as_json: AsJson = False,
) -> None:
    """The agent's AgentDNA: identity, personality, skills, model, memory and boundaries."""

    async def work(session: AsyncSession) -> AgentDNA:
        found = await _agent(session, await _team(session, team), agent)
        return await AgentRepository(session).dna(found.id, team_id=found.team_id)

    _print_model(_in_session(work), as_json)


# -- memories ------------------------------------------------------------------------------


_ID_PREFIX = re.compile(r"[0-9a-f]{4,32}")


async def _memory_id(session: AsyncSession, team: Team, given: str) -> uuid.UUID:
    """The id of the team's memory that `given` names: its id, or its id's first digits.

    Raises:
        NotFoundError: If no memory of the team has such an id.
        typer.Exit: If `given` is not hexadecimal digits (four or more), or is the start of
            the ids of several of the team's memories.
    """
    digits = given.strip().lower().replace("-", "")
    if not _ID_PREFIX.fullmatch(digits):
        raise _fail(f"{given!r} is not a memory id, nor its first 4 or more hexadecimal digits")
    first, last = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
    statement = (
        select(Memory.id)
        .where(Memory.team_id == team.id, col(Memory.id).between(first, last))
        .order_by(col(Memory.id))
        .limit(2)
    )
    async with translated_errors():
        found = (await session.exec(statement)).all()
    if not found:
        raise NotFoundError("memory", f"{given} in team {team.slug!r}")
    if len(found) > 1:
        raise _fail(f"{given} starts the ids of several memories of team {team.slug}: give more")
    return found[0]


async def _short_ids(
    session: AsyncSession, team_id: uuid.UUID, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """How tables show the ids of the team's memories: their first `SHORT_ID` digits.

    Or as many more as tell one apart from the team's other memories that share them, so
    that `memories show` takes what a table shows.
    """
    if not ids:
        return {}
    prefixes = [memory_id.hex[:SHORT_ID] for memory_id in ids]
    near = sa.or_(
        *(
            col(Memory.id).between(uuid.UUID(p.ljust(32, "0")), uuid.UUID(p.ljust(32, "f")))
            for p in prefixes
        )
    )
    statement = select(Memory.id).where(Memory.team_id == team_id, near)
    async with translated_errors():
        neighbours = (await session.exec(statement)).all()
    shown = {}
    for memory_id in ids:
        digits = max(
            [SHORT_ID]
            + [_shared_digits(memory_id, other) + 1 for other in neighbours if other != memory_id]
        )
        dashes = sum(1 for position in (8, 12, 16, 20) if position < digits)
        shown[memory_id] = str(memory_id)[: digits + dashes]
    return shown


def _shared_digits(one: uuid.UUID, other: uuid.UUID) -> int:
    """How many hexadecimal digits two ids start with alike."""
    return next((i for i, (a, b) in enumerate(zip(one.hex, other.hex, strict=True)) if a != b), 32)


MemoryId = Annotated[
    str,
    typer.Argument(
        metavar="ID",
        help="The memory's id, or its first digits (4 or more) as tables show them.",
    ),
]


@_command(memories, "list")
def list_memories(
    team: TeamSlug,
    memory_type: Annotated[
        MemoryType | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help=f"Only memories of this type: {', '.join(MemoryType)}.",
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option(metavar="N", help=f"At most this many (1 to {MAX_LIMIT:,}), newest first."),
    ] = 50,
    as_json: AsJson = False,
) -> None:
    """The team's memories, newest first."""
    _check_limit(limit)

    async def work(session: AsyncSession) -> tuple[list[Memory], dict[uuid.UUID, str]]:
        team_id = (await _team(session, team)).id
        filters: dict[str, Any] = {} if memory_type is None else {"memory_type": memory_type}
        found = await MemoryRepository(session).list(
            team_id=team_id, limit=limit, newest_first=True, **filters
        )
        return list(found), await _short_ids(session, team_id, [m.id for m in found])

    found, ids = _in_session(work)
    if as_json:
        _print_json([_memory_json(memory) for memory in found])
        return
    kind = "" if memory_type is None else f"{memory_type.value} "
    _print_table(
        f"Memories of {team}",
        ["id", "type", "imp", "tier", "status", "content"],
        [
            [
                ids[m.id],
                m.memory_type.value,
                m.importance,
                m.tier.value,
                m.status.value,
                _excerpt(m.content),
            ]
            for m in found
        ],
        empty=f"team {team} has no {kind}memories",
        fill="content",
    )


def _memory_json(memory: Memory) -> dict[str, Any]:
    return memory.model_dump(mode="json", exclude={"embedding"})


@_command(memories, "show")
def show_memory(team: TeamSlug, memory_id: MemoryId, as_json: AsJson = False) -> None:
    """One memory of the team, with its tags."""

    async def work(session: AsyncSession) -> tuple[Memory, list[str]]:
        repository = MemoryRepository(session)
        found = await _team(session, team)
        memory = await repository.get(await _memory_id(session, found, memory_id), team_id=found.id)
        return memory, await repository.tags(memory.id, team_id=found.id)

    memory, tags = _in_session(work)
    _print_model(memory, as_json, tags=tags)


@_command(memories, "history")
def memory_history(team: TeamSlug, memory_id: MemoryId, as_json: AsJson = False) -> None:
    """The audit trail of one memory of the team, oldest first."""

    async def work(session: AsyncSession) -> list[Any]:
        found = await _team(session, team)
        full_id = await _memory_id(session, found, memory_id)
        return list(await MemoryRepository(session).history(full_id, team_id=found.id))

    result = _in_session(work)
    if as_json:
        _print_json([log.model_dump(mode="json") for log in result])
        return
    rows = [
        [
            _words(log.created_at),
            log.action,
            log.changed_by,
            log.reason or "",
            _excerpt(log.new_content or ""),
        ]
        for log in result
    ]
    _print_table(
        f"History of {memory_id}",
        ["when", "action", "by", "reason", "content"],
        rows,
        empty=f"memory {memory_id} has no history",
        fill="content",
    )


@_command(memories, "search")
def search_memories(
    team: TeamSlug,
    query: Annotated[str, typer.Argument(metavar="QUERY", help="What to look for, in words.")],
    agent: Annotated[
        str | None, typer.Option(metavar="SLUG", help="As this agent sees them.")
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", help=f"At most this many results (1 to {MAX_LIMIT:,}).")
    ] = 10,
    as_json: AsJson = False,
) -> None:
    """The team's memories for QUERY, ranked as `retrieve` ranks them, with each signal.

    Vector recall (QUERY embedded with the configured embedder) fused with full-text recall;
    scored with the agent's retrieval weights (the defaults without --agent). Each result
    shows its score, the weighted sum of its signals, and under its content the signals:
    sem, rec, imp, cont and rel are the semantic, recency, importance, continuity and
    relationship signals. Pinned memories come first.
    """
    _check_limit(limit)

    async def work(session: AsyncSession) -> tuple[list[Any], dict[uuid.UUID, str]]:
        found = await _team(session, team)
        agent_id = (await _agent(session, found, agent)).id if agent else None
        hits = await MemoryRepository(session).retrieve(
            query, team_id=found.id, agent_id=agent_id, limit=limit
        )
        return hits, await _short_ids(session, found.id, [hit.id for hit in hits])

    hits, ids = _in_session(work)
    if as_json:
        _print_json([hit.model_dump(mode="json", exclude={"embedding"}) for hit in hits])
        return
    rows = []
    for rank, hit in enumerate(hits, start=1):
        signals = " ".join(
            f"{name} {value:.2f}"
            for name, value in zip(SIGNAL_COLUMNS, hit.signals.model_dump().values(), strict=True)
        )
        pinned = "pinned; " if hit.is_pinned else ""
        rows.append(
            [rank, f"{hit.score:.3f}", ids[hit.id], f"{_excerpt(hit.content)}\n{pinned}{signals}"]
        )
    _print_table(
        f'Search "{query}"',
        ["#", "score", "id", "content"],
        rows,
        empty=f"no memory of team {team} matches {query!r}",
        fill="content",
    )


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


def _agent_map(pairs: Sequence[str]) -> dict[str, str]:
    """`--agent-map OLD=NEW` options as {OLD: NEW}."""
    mapped = {}
    for pair in pairs:
        old, equals, new = pair.partition("=")
        if not (equals and old.strip() and new.strip()):
            raise _fail(f"--agent-map takes OLD=NEW, two agents' slugs, not {pair!r}")
        mapped[old.strip()] = new.strip()
    return mapped


def _import_report(counts: ImportCounts, team: str, update_existing: bool) -> str:
    already = f"updated {counts.updated}" if update_existing else f"skipped {counts.skipped}"
    said = (
        f"imported {counts.added} memories into {team}; {already} already there;"
        f" embedded {counts.embedded} lines without an embedding"
    )
    if counts.dropped:
        dropped = ", ".join(f"{count} to {kind}" for kind, count in counts.dropped.items())
        said += f"; left out links to rows team {team} lacks: {dropped}"
    return said


@_command(memories, "import")
def import_command(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="JSON Lines: one memory per line.", exists=True, dir_okay=False
        ),
    ],
    team: TeamSlug,
    agent_map: Annotated[
        list[str] | None,
        typer.Option(
            "--agent-map",
            metavar="OLD=NEW",
            help="Attach the memories of the file's agent OLD to the team's agent NEW"
            " (slugs; repeat it for more agents).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(metavar="N", help="Memories per COPY batch.")] = 1000,
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
    and nothing is imported. The file may be another team's export: a memory of an agent is
    attached to the team's agent of the same slug (or the one --agent-map names), and a line
    whose agent the team lacks is refused (create the agent, or map it). Links to what the
    team lacks (the source conversation and messages, related and contradicting memories
    that neither the team nor the file has) are left out, and counted. Memories keep their
    ids, so importing a file twice adds its memories once.

    A line with the id of one of the team's memories is skipped, or with --update-existing
    restores that memory: its fields and tags become the line's (a field the line leaves
    out, its default), and a line without an embedding is embedded. A line that would change
    a memory's type, agent, user, source or creation date is refused. Progress goes to
    stderr: a bar on a terminal, else a line a batch.

    A file that is large beside the team is loaded beside the team's vector index, which is
    then rebuilt to hold it before the command ends (its searches stay right meanwhile); a
    team the file takes past 500 memories gets its index the same way.
    """
    if batch_size < 1:
        raise _fail(f"--batch-size must be at least 1, got {batch_size}")
    mapped = _agent_map(agent_map or [])

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
                agent_map=mapped,
                on_progress=on_progress,
            )

    counts = _in_session(work)
    console.print(_import_report(counts, team, update_existing), soft_wrap=True)


@_command(memories, "export")
def export_command(
    team: TeamSlug,
    output: Annotated[
        Path | None,
        typer.Option(metavar="FILE", help="File to write; standard output if omitted."),
    ] = None,
) -> None:
    """Write the team's memories as JSON Lines that `memories import` reads back.

    Each line is a memory's fields, its id, and the slug of its agent, by which an import
    into another team finds that team's agent.
    """
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
    console.print(f"exported {len(lines)} memories to {output}", soft_wrap=True)


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


@_command(embeddings, "migrate")
def migrate_embeddings_command(
    team: Annotated[
        str | None,
        typer.Option(
            "--team", metavar="SLUG", help="Only this team (its slug), if the dimension stays."
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(metavar="N", help="Memories per call of the embedder and per transaction."),
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


@_command(embeddings, "abandon")
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
