"""The package's part of a database it shares with an application's own tables.

An application that imports the models has the package's tables in its `SQLModel.metadata`, so
its alembic autogenerate would compare them too. `alembic_include_object` tells the two apart:
an application's migrations compare everything but the package's objects, and the package's
own (`migrations/env.py`) compare exactly those.
"""

from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlmodel import SQLModel

from skill_store import models

VERSION_TABLE = "alembic_version"
"""The table of the package's migration history; an application's history needs its own."""

EMBEDDER_MIGRATION_COLUMNS = frozenset({"embedding_next", "embedding_model_next"})
"""`memory`'s shadow columns while an embedder migration is in progress (migration 0017)."""

EMBEDDER_MIGRATION_INDEX_PREFIX = "memory_next_"
"""Start of the names of the indexes on the shadow columns, until the switch renames them."""


@cache
def _package_tables() -> frozenset[sa.Table]:
    """The package's tables, as its models declare them (an application's are not among them)."""
    exported = (getattr(models, name) for name in models.__all__)
    return frozenset(
        value.__table__
        for value in exported
        if isinstance(value, type) and issubclass(value, SQLModel) and hasattr(value, "__table__")
    )


@cache
def _package_table_names() -> frozenset[str]:
    return frozenset(table.name for table in _package_tables()) | {VERSION_TABLE}


def package_enums() -> frozenset[str]:
    """The names of the PostgreSQL enum types of the package's columns."""
    return frozenset(
        column.type.name
        for table in _package_tables()
        for column in table.columns
        if isinstance(column.type, sa.Enum) and column.type.name
    )


def in_embedder_migration(type_: str, name: str | None) -> bool:
    """Whether a column or index of `memory` exists only while an embedder migration runs.

    The models never declare them: the package's own comparison (`migrations/env.py`) leaves
    them out, so `skill-store db check` stays clean while a migration is in progress.
    """
    if type_ == "column":
        return name in EMBEDDER_MIGRATION_COLUMNS
    prefix = EMBEDDER_MIGRATION_INDEX_PREFIX
    return type_ == "index" and name is not None and name.startswith(prefix)


def alembic_include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Whether an application's alembic autogenerate should compare a database object.

    Pass it as `include_object=` to `context.configure` in the application's `env.py` (with
    a `version_table` of its own): autogenerate then leaves out the package's tables, their
    columns, indexes (those written by hand in the package's migrations and each team's
    vector index included) and constraints, and the package's version table, and compares
    everything else. The package's functions, triggers and policies are not compared by
    alembic at all. Objects an application adds to the package's tables are the package's
    too: keep the application's objects on its own tables.

    Args:
        obj: The table, column, index or constraint, from the models or the database.
        name: Its name.
        type_: `"table"`, `"column"`, `"index"`, `"unique_constraint"` or
            `"foreign_key_constraint"`.
        reflected: Whether it was read from the database.
        compare_to: Its counterpart on the other side, or None.

    Returns:
        False for the package's objects, True for the others.
    """
    table = obj if isinstance(obj, sa.Table) else getattr(obj, "table", None)
    if not isinstance(table, sa.Table):
        return True
    # The package's tables live in the default schema: `app.user` is not the package's.
    return table.schema is not None or table.name not in _package_table_names()
