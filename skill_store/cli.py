"""The `skill-store` command."""

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, TypeVar

import typer
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from pydantic import ValidationError

from skill_store.database import database_url, run_alembic
from skill_store.errors import SkillStoreError
from skill_store.settings import get_settings, mask_password

T = TypeVar("T")

app = typer.Typer(
    help="Persistence layer of a multi-agent platform: users, teams, agents, memory.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
db = typer.Typer(help="Create, upgrade and inspect the database schema.", no_args_is_help=True)
app.add_typer(db, name="db")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can cause into one line on stderr and exit status 1."""
    try:
        yield
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc'])).upper()}: {problem['msg']}"
            for problem in error.errors()
        )
        raise _fail(f"invalid configuration: {problems}") from None
    except (SkillStoreError, CommandError) as error:
        raise _fail(str(error)) from None


def _on_database(action: Callable[[Config], T]) -> T:
    """Run `action` with an alembic config on the configured database, printing where it is."""
    with _user_errors():
        url = database_url()
        typer.echo(f"database: {mask_password(url)}")
        return asyncio.run(run_alembic(action, url))


def _revisions(config: Config) -> tuple[str | None, str | None]:
    context = MigrationContext.configure(config.attributes["connection"])
    return context.get_current_revision(), ScriptDirectory.from_config(config).get_current_head()


@db.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the schema to REVISION (by default the latest)."""

    def action(config: Config) -> tuple[str | None, str | None]:
        command.upgrade(config, revision)
        return _revisions(config)

    current, _head = _on_database(action)
    typer.echo(f"schema at revision {current}")


@db.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; `base` removes the schema.")],
) -> None:
    """Downgrade the schema to REVISION."""

    def action(config: Config) -> tuple[str | None, str | None]:
        command.downgrade(config, revision)
        return _revisions(config)

    current, _head = _on_database(action)
    typer.echo(f"schema at revision {current or 'base (empty)'}")


@db.command()
def current() -> None:
    """Show the schema's revision and whether it is the latest."""
    current, head = _on_database(_revisions)
    if current is None:
        raise _fail(f"the schema is not migrated (latest is {head}): run `skill-store db upgrade`")
    state = "latest" if current == head else f"behind {head}: run `skill-store db upgrade`"
    typer.echo(f"schema at revision {current} ({state})")


@db.command()
def check() -> None:
    """Compare the schema with the models; exit 1 if they differ."""
    _on_database(command.check)
    typer.echo("no drift: the schema matches the models")


@db.command()
def url() -> None:
    """Show the database URL (password masked), starting the embedded server if it is used."""
    with _user_errors():
        settings = get_settings()
        resolved = database_url(settings)
    where = "" if settings.database_url else f" (embedded server in {settings.embedded_data_dir})"
    typer.echo(f"{mask_password(resolved)}{where}")


def main() -> None:
    """Run the `skill-store` command."""
    app()
