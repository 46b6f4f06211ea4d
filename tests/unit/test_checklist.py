"""The checklist of ARCHITECTURE.md ("Adding an entity"), where no database is needed."""

import sqlalchemy as sa
from sqlmodel import SQLModel

import skill_store
from skill_store import models
from skill_store.models import Memory, MemoryCreate, metadata
from skill_store.repositories._bulk import COPY_COLUMNS, TAG_COPY_COLUMNS

NOT_COPIED = {
    "tags": "copied into memory_tag",
    "created_at": "copied, with last_accessed_at, only when an item gives it",
}
"""`MemoryCreate` fields that `add_many` writes other than through `COPY_COLUMNS`."""


def table_classes() -> dict[str, type[SQLModel]]:
    """The table class of each table, as `skill_store.models` exports them."""
    exported = [getattr(models, name) for name in models.__all__]
    return {
        value.__tablename__: value
        for value in exported
        if isinstance(value, type) and issubclass(value, SQLModel) and hasattr(value, "__table__")
    }


def test_every_table_and_its_create_model_are_exported() -> None:
    classes = table_classes()
    assert set(classes) == set(metadata.tables), "a table class is not in skill_store.models"
    names = [cls.__name__ for cls in classes.values()]
    expected = {*names, *(f"{name}Create" for name in names)}
    assert expected - set(skill_store.__all__) == set()
    assert all(getattr(skill_store, name) is getattr(models, name) for name in expected)


def test_skill_store_exports_what_models_exports() -> None:
    from_models = {
        name
        for name in skill_store.__all__
        if getattr(models, name, None) is getattr(skill_store, name)
    }
    assert from_models == set(models.__all__) - {"metadata"}


def test_every_memory_create_field_is_copied_by_add_many() -> None:
    columns = sa.inspect(Memory).columns
    fields = set(MemoryCreate.model_fields) - NOT_COPIED.keys()
    assert {name for name in fields if name not in columns} == set(), "fields without a column"
    assert {columns[name].name for name in fields} - set(COPY_COLUMNS) == set()
    assert "tag" in TAG_COPY_COLUMNS
    assert set(NOT_COPIED) <= set(MemoryCreate.model_fields)
