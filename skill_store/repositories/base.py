"""The generic repository: typed CRUD for one table, and the one place driver errors become ours."""

import inspect
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cache, wraps
from typing import Annotated, Any, Generic, TypeVar, get_args, get_origin, get_type_hints

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, create_model
from pydantic_core import InitErrorDetails
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.errors import (
    AccessDeniedError,
    ConflictError,
    ConnectionLostError,
    NotFoundError,
    SchemaNotMigratedError,
    SkillStoreError,
    StatementTimeoutError,
)
from skill_store.models._types import INT4_MAX, INT8_MAX, Moment

ModelT = TypeVar("ModelT", bound=SQLModel)
CreateT = TypeVar("CreateT", bound=SQLModel)
UpdateT = TypeVar("UpdateT", bound=SQLModel)

_KEY = re.compile(r"Key \((?P<columns>.+?)\)=\((?P<values>.*)\)")
_REFERENCED_TABLE = re.compile(r'present in table "(?P<table>[^"]+)"')
_DELETED_TABLE = re.compile(r'on table "(?P<table>[^"]+)"')
_UNDEFINED_OBJECT_STATES = {"42P01", "42883", "42704"}  # table, function, type
_INSUFFICIENT_PRIVILEGE = "42501"
_POLICY_TABLE = re.compile(r'row-level security policy for table "(?P<table>[^"]+)"')
_QUERY_CANCELED = "57014"
OUT_OF_STEP = (asyncpg.InterfaceError, asyncpg.InternalClientError)
"""asyncpg's own errors: after one, its protocol's state may be out of step with the server."""


def _key_values(detail: str) -> dict[str, str]:
    """`Key (lower(email))=(a@b.c)` → {"email": "a@b.c"}; only the last value may hold commas."""
    match = _KEY.search(detail)
    if match is None:
        return {}
    columns = [re.sub(r"^\w+\((\w+)\)$", r"\1", name) for name in match["columns"].split(", ")]
    values = match["values"].split(", ", len(columns) - 1)
    return dict(zip(columns, values, strict=False))


def _driver_error(error: DBAPIError) -> BaseException | None:
    """The driver's own exception (asyncpg's, behind SQLAlchemy's adapter)."""
    return getattr(error.orig, "__cause__", None) or error.orig


def connection_lost(cause: BaseException | None = None) -> ConnectionLostError:
    """The error of a connection that broke, in the server's words when it sent some.

    asyncpg's own errors (`InterfaceError`, `InternalClientError`) speak of its protocol's
    state ("cannot switch to state 21"), in which a connection cut at the wrong moment
    leaves it: for them, as without a cause, the reason is that the server closed it.
    """
    if cause is None or isinstance(cause, OUT_OF_STEP) or not str(cause):
        return ConnectionLostError("the server closed it")
    return ConnectionLostError(str(cause))


def _constraint_message(name: str | None) -> str | None:
    """The message a model declares for its constraint `name` (see `with_message`)."""
    for table in SQLModel.metadata.tables.values():
        items: list[sa.Constraint | sa.Index] = [*table.constraints, *table.indexes]
        for item in items:
            if item.name == name:
                message: str | None = item.info.get("message")
                return message
    return None


def _describe_integrity_error(error: DBAPIError) -> ConflictError:
    """Name the broken rule in words, from the driver's error."""
    cause = _driver_error(error)
    constraint = getattr(cause, "constraint_name", None)
    detail = getattr(cause, "detail", None) or ""
    message = str(cause)
    state = getattr(error.orig, "sqlstate", None)
    values = _key_values(detail)
    declared = _constraint_message(constraint)
    referenced = _REFERENCED_TABLE.search(detail)
    if declared is not None and "still referenced" not in detail:
        try:
            return ConflictError(declared.format_map(values), constraint)
        except KeyError:  # the detail hides the values from a role under row-level security
            table = getattr(cause, "table_name", "?")
            if state == "23505":
                return ConflictError(
                    f"the {table} repeats a key that must be unique ({constraint})", constraint
                )
            named = referenced["table"] if referenced else "row"
            return ConflictError(
                f"the {named} named by the {table} is not of the {table}'s team",
                constraint,
            )
    if state == "23503" and referenced:
        column, value = next(iter(values.items()), ("reference", "?"))
        table = getattr(cause, "table_name", "?")
        return ConflictError(
            f"{referenced['table']} {value} does not exist (referenced by {table}.{column})",
            constraint,
        )
    if state == "23503" and (deleted := _DELETED_TABLE.search(message)):
        value = values.get("id") or next(iter(values.values()), "?")
        table = getattr(cause, "table_name", "?")
        return ConflictError(
            f"{deleted['table']} {value} is still referenced by {table}", constraint
        )
    if state == "23503":  # raised by a trigger, which words the rule itself (migration 0003)
        return ConflictError(getattr(cause, "message", message), constraint)
    return ConflictError(f"the change breaks the database rule {constraint or state}: {message}")


def _describe_denial(error: DBAPIError) -> AccessDeniedError:
    """Say what a team-scoped session (or a role without the privilege) may not do."""
    message = str(_driver_error(error))
    if policy := _POLICY_TABLE.search(message):
        return AccessDeniedError(
            f"a {policy['table']} row of another team cannot be written from a session"
            " scoped to a team",
            policy["table"],
        )
    return AccessDeniedError(f"the database refused: {message}")


@asynccontextmanager
async def translated_errors() -> AsyncIterator[None]:
    """Raise the package's errors instead of the driver's for what a caller can cause."""
    try:
        yield
    except DBAPIError as error:
        if error.connection_invalidated:
            raise connection_lost(_driver_error(error)) from error
        state = getattr(error.orig, "sqlstate", None) or ""
        if state.startswith("23"):
            raise _describe_integrity_error(error) from error
        if state == _INSUFFICIENT_PRIVILEGE:
            raise _describe_denial(error) from error
        if state in _UNDEFINED_OBJECT_STATES:
            raise SchemaNotMigratedError(str(_driver_error(error))) from error
        if state == _QUERY_CANCELED:
            raise StatementTimeoutError(str(_driver_error(error))) from error
        raise


def cannot_be_none(title: str, names: Sequence[str]) -> ValidationError:
    """A validation error saying that each named field cannot be None."""
    return ValidationError.from_exception_data(
        title,
        [
            InitErrorDetails(
                type="value_error",
                loc=(name,),
                input=None,
                ctx={"error": ValueError(f"{name} cannot be null")},
            )
            for name in names
        ],
    )


def check_not_null(model: type[SQLModel], values: Mapping[str, Any]) -> None:
    """Check that no value is None where the table allows no NULL.

    Raises:
        pydantic.ValidationError: Naming every such value.
    """
    columns = sa.inspect(model).columns
    names = [name for name, value in values.items() if value is None and not columns[name].nullable]
    if names:
        raise cannot_be_none(model.__name__, names)


RowT = TypeVar("RowT", bound=SQLModel)
SchemaT = TypeVar("SchemaT", bound=SQLModel)


def validate(schema: type[SchemaT], data: SchemaT | Mapping[str, Any]) -> SchemaT:
    """`data` as a validated `schema`; an instance is kept, with the fields its caller set.

    (`model_validate` of an instance would return a copy with every field marked as set.)
    """
    return data if isinstance(data, schema) else schema.model_validate(data)


class _Page(BaseModel):
    limit: int = Field(ge=0, le=INT4_MAX)
    offset: int = Field(ge=0, le=INT8_MAX)


def check_page(limit: int, offset: int = 0) -> None:
    """Check a page size and offset before any SQL.

    Raises:
        pydantic.ValidationError: If either is negative, or larger than PostgreSQL takes.
    """
    _Page(limit=limit, offset=offset)


Key = uuid.UUID | tuple[uuid.UUID, uuid.UUID]
"""A row's primary key: its id, or (team_id, id) for a table of a team's rows."""


async def require_row(session: AsyncSession, model: type[RowT], key: Key) -> RowT:
    """Return the `model` row with this primary key.

    Raises:
        NotFoundError: If there is none.
    """
    async with translated_errors():
        row = await session.get(model, key)
    if row is None:
        raise NotFoundError(str(model.__tablename__), key[-1] if isinstance(key, tuple) else key)
    return row


@cache
def _field_adapter(model: type[SQLModel], name: str) -> TypeAdapter[Any]:
    """A validator of the field's type, built once per field (building one is costly).

    A `timestamptz` column takes only aware moments: a naive one is refused, not guessed.
    """
    column_type = sa.inspect(model).columns[name].type
    stored = getattr(column_type, "impl", column_type)
    if isinstance(stored, sa.DateTime) and stored.timezone:
        return TypeAdapter(Moment | None)
    # With its constraints (e.g. PgStr's check of the text), which are its metadata.
    return TypeAdapter(model.model_fields[name].rebuild_annotation())


def _checked(annotation: Any) -> bool:
    """Whether a parameter of this type is validated on the way in: an id, or constrained text."""
    if annotation is uuid.UUID or get_origin(annotation) is Annotated:
        return True
    return any(_checked(argument) for argument in get_args(annotation))


def _eager(annotation: Any) -> Any:
    """`Iterable[X]` as `list[X]`: read once, and checked whole before the method runs."""
    if get_origin(annotation) is Iterable:
        return list[get_args(annotation)]  # type: ignore[misc]
    return annotation


def validating_arguments(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method`, validating first its parameters typed as ids or constrained text (`PgStr`).

    So a slug where an id belongs, or a NUL in a query, is a `pydantic.ValidationError` that
    names the parameter, raised before any SQL (a driver error would abort the transaction).
    Valid values are passed on as their type (an id given as a string, as a `uuid.UUID`).
    The validator is built at the first call, as the models build theirs.
    """

    @cache
    def checker() -> tuple[inspect.Signature, type[BaseModel]] | None:
        hints = get_type_hints(method, include_extras=True)
        signature = inspect.signature(method)
        fields: dict[str, Any] = {
            name: (_eager(hints[name]), parameter.default)
            if parameter.default is not inspect.Parameter.empty
            else (_eager(hints[name]), ...)
            for name, parameter in signature.parameters.items()
            if name in hints
            and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
            and _checked(hints[name])
        }
        return (signature, create_model(method.__qualname__, **fields)) if fields else None

    @wraps(method)
    async def validated(*args: Any, **kwargs: Any) -> Any:
        if (found := checker()) is None:
            return await method(*args, **kwargs)
        signature, arguments = found
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as error:  # as Python names the method: `bind` does not
            raise TypeError(f"{method.__qualname__}() {error}") from None
        fields = arguments.model_fields
        given = {name: value for name, value in bound.arguments.items() if name in fields}
        checked = arguments.model_validate(given)
        bound.arguments.update({name: getattr(checked, name) for name in given})
        return await method(*bound.args, **bound.kwargs)

    return validated


class BaseRepository(Generic[ModelT, CreateT, UpdateT]):
    """What every repository shares: creating rows, and finding, changing and deleting them.

    Subclasses set `model`, `create_model` and `update_model`.

    A repository never commits: the caller owns the transaction. Every write runs in a
    savepoint, so a failed write leaves the caller's transaction as it was. The ids and the
    constrained text that public methods take are validated before any SQL
    (`validating_arguments`, applied to every subclass's public coroutines).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, member in list(vars(cls).items()):
            if not name.startswith("_") and inspect.iscoroutinefunction(member):
                setattr(cls, name, validating_arguments(member))

    model: type[ModelT]
    create_model: type[CreateT]
    update_model: type[UpdateT]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def entity(self) -> str:
        """The table name, used in messages."""
        return str(self.model.__tablename__)

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        """A savepoint whose driver errors are translated; flushed on success."""
        async with translated_errors(), self.session.begin_nested():
            yield
            await self.session.flush()

    def build(self, data: CreateT) -> ModelT:
        """The row to insert for validated create data (subclasses add server-side fields)."""
        return self.model.model_validate(data)

    async def create(self, data: CreateT | Mapping[str, Any]) -> ModelT:
        """Validate `data` as the create model and insert it.

        Raises:
            pydantic.ValidationError: If the data is invalid (nothing is sent to the database).
            ConflictError: If it clashes with a unique key, or names a missing row or a row
                of another team.
        """
        row = self.build(validate(self.create_model, data))
        async with self.writing():
            self.session.add(row)
        return row

    async def _find(self, key: Key) -> ModelT | None:
        async with translated_errors():
            return await self.session.get(self.model, key)

    async def _update(self, key: Key, data: UpdateT | Mapping[str, Any]) -> ModelT:
        validated = validate(self.update_model, data)
        changes = {name: getattr(validated, name) for name in validated.model_fields_set}
        check_not_null(self.model, changes)
        row = await require_row(self.session, self.model, key)
        try:
            async with self.writing():
                for name, value in changes.items():
                    setattr(row, name, value)
                    flag_modified(row, name)
        except SkillStoreError:
            await self.session.refresh(row)  # the savepoint's rollback expired it
            raise
        return row

    async def _delete(self, *conditions: Any) -> bool:
        async with self.writing():
            result = await self.session.exec(sa.delete(self.model).where(*conditions))
        return bool(result.rowcount)

    def _filtered(self, statement: Any, filters: Mapping[str, Any]) -> Any:
        """`statement` where each column equals its filter value, validated as the field."""
        columns = sa.inspect(self.model).columns
        for name, value in filters.items():
            if name not in columns:
                raise ValueError(f"{self.model.__name__} has no column {name!r} to filter on")
            value = _field_adapter(self.model, name).validate_python(value)
            statement = statement.where(columns[name] == value)
        return statement

    async def _list(
        self, limit: int, offset: int, filters: Mapping[str, Any], newest_first: bool
    ) -> Sequence[ModelT]:
        check_page(limit, offset)
        statement = self._filtered(select(self.model), filters)
        created_at = sa.inspect(self.model).columns["created_at"]
        statement = statement.order_by(
            created_at.desc() if newest_first else created_at, sa.inspect(self.model).columns["id"]
        )
        async with translated_errors():
            rows: Sequence[ModelT] = (
                await self.session.exec(statement.limit(limit).offset(offset))
            ).all()
        return rows

    async def _count(self, filters: Mapping[str, Any]) -> int:
        statement = self._filtered(select(func.count()).select_from(self.model), filters)
        async with translated_errors():
            return int((await self.session.exec(statement)).one())


class Repository(BaseRepository[ModelT, CreateT, UpdateT]):
    """CRUD for a table keyed by `id` alone: users and teams, the rows every team shares."""

    async def get_by_id(self, id: uuid.UUID) -> ModelT | None:
        """Return the row with this id, or None."""
        return await self._find(id)

    async def get_or_raise(self, id: uuid.UUID) -> ModelT:
        """Return the row with this id.

        Raises:
            NotFoundError: If there is none.
        """
        return await require_row(self.session, self.model, id)

    async def update(self, id: uuid.UUID, data: UpdateT | Mapping[str, Any]) -> ModelT:
        """Apply the fields set in `data` to the row with this id.

        Sub-configs and other JSON values are written even when the caller changed them in
        place, since every field set in `data` is written.

        Raises:
            pydantic.ValidationError: If the data is invalid, or sets a required field to None.
            NotFoundError: If there is no such row.
            ConflictError: If the change breaks a database rule.
        """
        return await self._update(id, data)

    async def delete(self, id: uuid.UUID) -> bool:
        """Delete the row with this id (the database cascades to its dependants).

        Returns:
            Whether a row was deleted.

        Raises:
            ConflictError: If other rows still reference it.
        """
        return await self._delete(col(self.model.id) == id)  # type: ignore[attr-defined]

    async def list(
        self, *, limit: int = 50, offset: int = 0, newest_first: bool = False, **filters: Any
    ) -> Sequence[ModelT]:
        """Rows whose columns equal `filters`, oldest first (or newest first).

        Raises:
            ValueError: If a filter names no column, or limit or offset is negative.
            pydantic.ValidationError: If a filter value is not valid for its column.
        """
        return await self._list(limit, offset, filters, newest_first)

    async def count(self, **filters: Any) -> int:
        """How many rows have columns equal to `filters`.

        Raises:
            ValueError: If a filter names no column.
            pydantic.ValidationError: If a filter value is not valid for its column.
        """
        return await self._count(filters)


class TeamRowRepository(BaseRepository[ModelT, CreateT, UpdateT]):
    """CRUD for a table of a team's rows, keyed by (team_id, id).

    Every statement names the team, so that on a database distributed by team (Citus) each
    goes to the one shard that holds the team's rows. A row of another team is not found.
    """

    async def get_by_id(self, id: uuid.UUID, *, team_id: uuid.UUID) -> ModelT | None:
        """Return the team's row with this id, or None."""
        return await self._find((team_id, id))

    async def get_or_raise(self, id: uuid.UUID, *, team_id: uuid.UUID) -> ModelT:
        """Return the team's row with this id.

        Raises:
            NotFoundError: If the team has none.
        """
        return await require_row(self.session, self.model, (team_id, id))

    async def update(
        self, id: uuid.UUID, data: UpdateT | Mapping[str, Any], *, team_id: uuid.UUID
    ) -> ModelT:
        """Apply the fields set in `data` to the team's row with this id.

        Sub-configs and other JSON values are written even when the caller changed them in
        place, since every field set in `data` is written.

        Raises:
            pydantic.ValidationError: If the data is invalid, or sets a required field to None.
            NotFoundError: If the team has no such row.
            ConflictError: If the change breaks a database rule.
        """
        return await self._update((team_id, id), data)

    async def delete(self, id: uuid.UUID, *, team_id: uuid.UUID) -> bool:
        """Delete the team's row with this id (the database cascades to its dependants).

        Returns:
            Whether a row was deleted.

        Raises:
            ConflictError: If other rows still reference it.
        """
        columns = sa.inspect(self.model).columns
        return await self._delete(columns["team_id"] == team_id, columns["id"] == id)

    async def list(
        self,
        *,
        team_id: uuid.UUID,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = False,
        **filters: Any,
    ) -> Sequence[ModelT]:
        """The team's rows whose columns equal `filters`, oldest first (or newest first).

        Raises:
            ValueError: If a filter names no column, or limit or offset is negative.
            pydantic.ValidationError: If a filter value is not valid for its column.
        """
        return await self._list(limit, offset, {"team_id": team_id, **filters}, newest_first)

    async def count(self, *, team_id: uuid.UUID, **filters: Any) -> int:
        """How many of the team's rows have columns equal to `filters`.

        Raises:
            ValueError: If a filter names no column.
            pydantic.ValidationError: If a filter value is not valid for its column.
        """
        return await self._count({"team_id": team_id, **filters})
