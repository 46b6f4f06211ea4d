"""`alembic_include_object` tells the package's objects from an application's, by their table."""

import sqlalchemy as sa

from skill_store import Agent, Memory, alembic_include_object
from skill_store.schema import package_enums


def include(obj: object, type_: str, reflected: bool = False) -> bool:
    return alembic_include_object(obj, getattr(obj, "name", None), type_, reflected, None)


def reflected_memory() -> sa.Table:
    """`memory` as autogenerate reads it from the database, with indexes the models lack."""
    table = sa.Table(
        "memory", sa.MetaData(), sa.Column("team_id", sa.Uuid), sa.Column("id", sa.Uuid)
    )
    sa.Index("idx_memory_team_text", table.c.team_id)
    sa.Index("memory_embedding_team_0a1b", table.c.id)
    return table


def test_the_packages_tables_and_what_hangs_on_them_are_left_out() -> None:
    memory = Memory.__table__
    assert not include(memory, "table")
    assert not include(memory.c.content, "column")
    assert not any(include(index, "index") for index in memory.indexes)
    assert not any(include(key, "foreign_key_constraint") for key in memory.foreign_key_constraints)
    assert not include(Agent.__table__.c.team_id, "column")


def test_indexes_only_the_database_has_and_the_version_table_are_left_out() -> None:
    reflected = reflected_memory()
    assert not any(include(index, "index", reflected=True) for index in reflected.indexes)
    version = sa.Table("alembic_version", sa.MetaData(), sa.Column("version_num", sa.String(32)))
    assert not include(version, "table", reflected=True)


def test_an_applications_objects_are_compared() -> None:
    metadata = sa.MetaData()
    task = sa.Table(
        "myapp_task",
        metadata,
        sa.Column("team_id", sa.Uuid, primary_key=True),
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("agent_id", sa.Uuid),
        sa.ForeignKeyConstraint(["team_id", "agent_id"], ["agent.team_id", "agent.id"]),
        sa.Index("ix_myapp_task_agent", "agent_id"),
    )
    own_user = sa.Table("user", metadata, sa.Column("id", sa.Integer), schema="myapp")
    version = sa.Table("myapp_alembic_version", metadata, sa.Column("version_num", sa.String))

    assert include(task, "table")
    assert include(task.c.agent_id, "column")
    assert all(include(key, "foreign_key_constraint") for key in task.foreign_key_constraints)
    assert all(include(index, "index") for index in task.indexes)
    assert include(own_user, "table")  # another schema's `user` is not the package's
    assert include(version, "table", reflected=True)


def test_package_enums_are_the_enum_types_of_the_packages_columns() -> None:
    assert package_enums() == {
        "user_role",
        "agent_status",
        "conversation_status",
        "message_role",
        "memory_type_enum",
        "memory_tier",
        "memory_status",
        "memory_source",
    }
