"""Alembic environment: async, on the database the package's settings name."""

import asyncio
from dataclasses import replace
from logging.config import fileConfig
from typing import Any

import alembic_postgresql_enum  # noqa: F401 (autogenerate sees enum types and their labels)
from alembic import context
from alembic.autogenerate.api import AutogenContext
from alembic_postgresql_enum.configuration import get_configuration, set_configuration
from pgvector.sqlalchemy import VECTOR
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.sql.sqltypes import UTCDateTime

from skill_store.database import MIGRATION_LOCK, database_url
from skill_store.models import metadata
from skill_store.models._types import PydanticJSONB
from skill_store.models.memory import TEAM_INDEX_PREFIX
from skill_store.schema import alembic_include_object, in_embedder_migration, package_enums

if context.config.config_file_name is not None:
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)

# Declared by hand in the migrations: autogenerate compares operator-class and partial
# indexes imperfectly, so they are kept out of `alembic check`.
HAND_WRITTEN_INDEXES = frozenset(
    {
        "idx_memory_team_type",
        "idx_memory_expires",
        "idx_memory_team_text",
        "idx_memory_team_pinned",
        "idx_memory_team_sample",
        "idx_memory_team_load_batch",
    }
)


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    # The package's objects only: what an application's migrations leave out, so that the
    # application's tables in the same database are never drift here.
    if alembic_include_object(obj, name, type_, reflected, compare_to):
        return False
    if in_embedder_migration(type_, name):
        return False
    if type_ != "index" or name is None:
        return True
    # The teams' own indexes are built by `skill_store.team_indexes`, not by migrations.
    return name not in HAND_WRITTEN_INDEXES and not name.startswith(TEAM_INDEX_PREFIX)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render column types so that a new migration imports each one it uses, and no other.

    The package's own types become the SQLAlchemy or pgvector types they store as, so a
    migration never depends on the package's code.
    """
    if type_ != "type":
        return False
    if isinstance(obj, PydanticJSONB):
        autogen_context.imports.add("from sqlalchemy.dialects import postgresql")
        return "postgresql.JSONB(astext_type=sa.Text())"
    if isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if isinstance(obj, VECTOR):
        autogen_context.imports.add("import pgvector.sqlalchemy")
        return f"pgvector.sqlalchemy.VECTOR(dim={obj.dim})"
    if type(obj).__module__.startswith("sqlmodel."):
        autogen_context.imports.add("import sqlmodel")  # rendered as sqlmodel.sql.sqltypes.X()
    return False


def configure(**options: Any) -> None:
    context.configure(
        target_metadata=metadata,
        include_object=include_object,
        render_item=render_item,
        compare_type=True,
        **options,
    )


def run_migrations(connection: Connection) -> None:
    configure(connection=connection)
    with context.begin_transaction():
        # One migration at a time per database: the next reads the version this one commits.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        context.run_migrations()


async def run_migrations_on(url: str) -> None:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


# The package's enum types only, for as long as this runs: the setting is global to the
# process, which may run an application's migrations afterwards.
enum_configuration = get_configuration()
set_configuration(replace(enum_configuration, include_name=package_enums().__contains__))
try:
    if context.is_offline_mode():
        configure(dialect_name="postgresql", literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
    elif (connection := context.config.attributes.get("connection")) is not None:
        run_migrations(connection)
    else:
        asyncio.run(run_migrations_on(database_url()))
finally:
    set_configuration(enum_configuration)
