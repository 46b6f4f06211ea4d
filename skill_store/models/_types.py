"""Field types and column mixins shared by every model family."""

import math
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from pgvector import Vector as PgVector
from pgvector.sqlalchemy import VECTOR
from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    GetCoreSchemaHandler,
    GetPydanticSchema,
    JsonValue,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_serializer,
)
from pydantic_core import InitErrorDetails, core_schema
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

from skill_store.errors import EmbeddingDimensionError
from skill_store.settings import get_settings

ModelT = TypeVar("ModelT", bound=BaseModel)

# Names of the constraints that the models do not name themselves, as the migrations name them.
SQLModel.metadata.naming_convention = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
}


def check_text(value: str) -> str:
    """Return `value` if PostgreSQL can store it, else raise ValueError saying why."""
    if "\x00" in value:
        raise ValueError(
            "text must not contain NUL (\\x00) characters: PostgreSQL cannot store them"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"text must be valid Unicode: lone surrogate at position {error.start}"
        ) from None
    return value


def _check_json(value: Any) -> Any:
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key)
            _check_json(item)
    elif isinstance(value, list):
        for item in value:
            _check_json(item)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("JSON numbers must be finite (no NaN or infinity)")
    return value


FLOAT32_MAX = float(np.finfo(np.float32).max)
_MIN_SQUARES = float(np.finfo(np.float32).tiny)  # the smallest normal float32
_MAX_SQUARES = FLOAT32_MAX / 2  # a margin for the rounding of a float32 sum

VectorLike = Sequence[float] | NDArray[Any]
"""An embedding as callers give it: a sequence of numbers or a one-dimensional NumPy array."""


def as_vector(values: VectorLike, dimensions: int) -> NDArray[np.float32]:
    """`values` as the float32 array that a `vector(dimensions)` column stores, checked.

    `vector` stores float32 and pgvector sums squares in float32, so the values are checked
    after conversion to float32: each finite and within float32's range, and the squared norm
    neither zero (values so small that they underflow) nor overflowing. Otherwise every
    cosine similarity with the vector would be NaN. The checks are vectorised.

    Args:
        values: The embedding.
        dimensions: How many values it must have.

    Returns:
        The values as a one-dimensional float32 array: `values` itself if it is one.

    Raises:
        EmbeddingDimensionError: If there are not `dimensions` values.
        pydantic.ValidationError: If a value is NaN or infinite, located at its position.
        ValueError: If the values are not numbers in one dimension, or saying which other
            condition the vector breaks.
    """
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"embedding values must be real numbers, not {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"embedding must be one-dimensional, not of shape {array.shape}")
    if array.dtype == np.float32:
        vector: NDArray[np.float32] = array
    else:
        with np.errstate(over="ignore"):  # values beyond float32's range become infinite
            vector = array.astype(np.float32)
    wide = vector.astype(np.float64)
    squares = float(np.dot(wide, wide))  # NaN or infinite if any value is
    if not math.isfinite(squares):
        raise _not_finite(array)
    if len(vector) != dimensions:
        raise EmbeddingDimensionError(expected=dimensions, got=len(vector))
    if squares < _MIN_SQUARES:
        raise ValueError(
            "embedding must not be all zeros (nor so small that it is zero in float32):"
            " its cosine similarity is undefined"
        )
    if squares > _MAX_SQUARES:
        raise ValueError(
            "embedding's norm is too large: its square overflows float32, so its cosine"
            " similarity is undefined"
        )
    return vector


def _not_finite(array: NDArray[Any]) -> ValueError:
    """The error for values that are NaN or infinite, before or after conversion to float32."""
    finite = np.isfinite(array)
    if finite.all():
        return ValueError(
            f"embedding values must be within float32 range (±{FLOAT32_MAX:.7g}):"
            " the vector column stores float32"
        )
    position = int(np.argmin(finite))
    return ValidationError.from_exception_data(
        "embedding",
        [InitErrorDetails(type="finite_number", loc=(position,), input=array[position].item())],
    )


def _embedding(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A list of floats stays one; an array becomes (or stays) a float32 array. Both checked."""
    dimensions = get_settings().embedding_dimensions
    try:
        if isinstance(value, np.ndarray):
            return as_vector(value, dimensions)
        values = handler(value)
        as_vector(values, dimensions)
    except EmbeddingDimensionError as error:
        raise ValueError(f"{error} (EMBEDDING_DIMENSIONS)") from None
    return values


def _serialized(value: list[float] | NDArray[np.float32], info: SerializationInfo) -> Any:
    """An array as a list in JSON; as it is otherwise (which pgvector's codecs take)."""
    return value.tolist() if info.mode_is_json() and isinstance(value, np.ndarray) else value


def _embedding_schema(_source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    return core_schema.no_info_wrap_validator_function(
        _embedding,
        handler(list[float]),
        serialization=core_schema.plain_serializer_function_ser_schema(_serialized, info_arg=True),
    )


PgStr = Annotated[str, AfterValidator(check_text)]
"""A string PostgreSQL can store: no NUL characters, no lone surrogates."""

INT4_MAX = 2**31 - 1
"""The largest value of an `integer` column."""

INT8_MAX = 2**63 - 1
"""The largest value of a `bigint` (and of a `LIMIT` or `OFFSET`)."""


def _check_moment(value: datetime) -> datetime:
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range once in UTC") from None
    return value


Moment = Annotated[AwareDatetime, AfterValidator(_check_moment)]
"""An aware date and time that `timestamptz` can store (year 1 to 9999 in UTC)."""

JSONObject = Annotated[dict[str, JsonValue], AfterValidator(_check_json)]
"""A JSON object PostgreSQL can store in `jsonb`: JSON types only (no tuples, sets, UUIDs)."""

JSONValue = Annotated[dict[str, JsonValue] | list[JsonValue], AfterValidator(_check_json)]
"""A JSON object or array PostgreSQL can store in `jsonb`."""

Embedding = Annotated[list[float] | NDArray[np.float32], GetPydanticSchema(_embedding_schema)]
"""`EMBEDDING_DIMENSIONS` numbers that `as_vector` accepts, as a list or a float32 NumPy array.

A list stays a list of floats; any other array becomes float32 (a float32 array is kept as
it is). JSON gets a list either way.
"""


class PydanticJSONB(sa.types.TypeDecorator[ModelT], Generic[ModelT]):
    """A `jsonb` column that stores a Pydantic model and loads it back as that model.

    SQLAlchemy does not see in-place changes to the loaded model: assign a new value
    (or call `sqlalchemy.orm.attributes.flag_modified`) for a change to be written.
    """

    impl = JSONB
    cache_ok = True

    def __init__(self, model: type[ModelT]) -> None:
        super().__init__()
        self.model = model

    def process_bind_param(self, value: ModelT | dict[str, Any] | None, dialect: Any) -> Any:
        """Validate `value` as the model and dump it to JSON."""
        if value is None:
            return None
        return self.model.model_validate(value).model_dump(mode="json")

    def process_result_value(self, value: Any, dialect: Any) -> ModelT | None:
        """Load the stored JSON as the model."""
        return None if value is None else self.model.model_validate(value)


class Vector(VECTOR):
    """`vector(n)`, sent by the driver in pgvector's binary format.

    The engines register pgvector's codecs (asyncpg or psycopg) on every connection; both
    take `pgvector.Vector` values, whereas pgvector's own column type would send text.
    """

    cache_ok = True

    def bind_processor(self, dialect: sa.Dialect) -> Any:
        """Wrap lists (and arrays) as `pgvector.Vector` for the driver's binary codec."""

        def process(value: Any) -> PgVector | None:
            return value if value is None or isinstance(value, PgVector) else PgVector(value)

        return process

    def column_expression(self, colexpr: Any) -> Any:
        """Select the column as `vector`, without its dimension.

        A connection's prepared statements keep the types of their results, and PostgreSQL
        refuses to run one whose result type changed ("cached plan must not change result
        type"): a column of a new dimension (an embedder migration's switch) would make
        every statement that selects it fail once in every other process.
        """
        return sa.cast(colexpr, VECTOR())


class Model(SQLModel):
    """The base of the package's models: each builds its validator when it is first used.

    Not when the package is imported: a program uses a few of the models, and building them
    all was most of the import's time. A model dumps its fields in the order it declares
    them (`id` first), and a field with a serialization alias (`metadata_json`) under it,
    by `model_dump` and in JSON alike.
    """

    model_config = SQLModel.model_config | {"defer_build": True, "serialize_by_alias": True}

    # Unannotated: a return type would replace the model's schema in serialization mode (the
    # one FastAPI documents responses with).
    @model_serializer(mode="wrap")
    def _in_declared_order(self, handler: SerializerFunctionWrapHandler):  # type: ignore[no-untyped-def]
        """The fields as `handler` dumps them, in the model's order.

        Pydantic dumps a model in the order of its instance's `__dict__`, which for a row
        that SQLAlchemy loaded or refreshed is the order it set the columns in.
        """
        dumped = handler(self)
        ordered = {}
        for name, field in type(self).model_fields.items():
            key = field.serialization_alias if field.serialization_alias in dumped else name
            if key in dumped:
                ordered[key] = dumped.pop(key)
        return ordered | dumped


INPUT = Model.model_config | {"extra": "forbid"}
"""For the models that take a caller's data: an unknown (e.g. misspelt) key is an error."""

TEXT_ARRAY = ARRAY(sa.Text)
UUID_ARRAY = ARRAY(sa.Uuid)
EMPTY_JSON = sa.text("'{}'::jsonb")
EMPTY_TEXT_ARRAY = sa.text("'{}'::text[]")


# A model's fields are collected from its base classes, the last base first: the key mixins
# below are the last base of each model, so that `id` is the first field of every row, dump,
# export line and dataframe.


class Identified(Model):
    """`id` as callers read it: the first field of each read model."""

    id: uuid.UUID


class UUIDPrimaryKey(Model):
    """Primary key `id`, made in Python so it is known before the row is flushed."""

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4,
        primary_key=True,
        sa_column_kwargs={"server_default": sa.text("gen_random_uuid()")},
    )


class TeamRowId(Model):
    """`id`, made in Python; the table's primary key is (team_id, id), declared by the table.

    Every table of a team's rows is keyed by its team first, so that it can be distributed
    (or partitioned) by `team_id`.
    """

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4,
        nullable=False,
        sa_column_kwargs={"server_default": sa.text("gen_random_uuid()")},
    )


def team_primary_key(table: str) -> sa.PrimaryKeyConstraint:
    """The primary key (team_id, id) of a team's table, named as the migrations name it."""
    return sa.PrimaryKeyConstraint("team_id", "id", name=f"pk_{table}")


def team_foreign_key(
    name: str, column: str, referenced: str, ondelete: str | None = None
) -> sa.ForeignKeyConstraint:
    """A foreign key (team_id, column) to (team_id, id) of `referenced`: a row of the same team."""
    return sa.ForeignKeyConstraint(
        ["team_id", column],
        [f"{referenced}.team_id", f"{referenced}.id"],
        name=name,
        ondelete=ondelete,
    )


class CreatedAt(Model):
    """`created_at`, set by the database when the row is inserted."""

    created_at: datetime | None = Field(
        default=None, nullable=False, sa_column_kwargs={"server_default": sa.func.now()}
    )

    __mapper_args__ = {"eager_defaults": True}


class Timestamps(CreatedAt):
    """`created_at` and `updated_at`; a database trigger keeps `updated_at` current."""

    updated_at: datetime | None = Field(
        default=None,
        nullable=False,
        sa_column_kwargs={"server_default": sa.func.now(), "server_onupdate": sa.FetchedValue()},
    )


METADATA = AliasChoices("metadata_json", "metadata")
"""The names a `metadata` value is read by: the attribute's and the column's."""


def metadata_field(*, column: bool) -> Any:
    """The field `metadata_json` of a model: the JSON object of the `metadata` column.

    SQLAlchemy reserves the attribute `metadata` on its classes (the tables' `MetaData`),
    so the attribute is `metadata_json`; everywhere a value is serialized (`model_dump`,
    JSON, dataframes, exports, web responses) it is `metadata`, as the column, and input
    takes either name.

    Args:
        column: The table's and its shared properties' field (an empty object by default),
            else an update's (None: unchanged).
    """
    names: dict[str, Any] = {
        "serialization_alias": "metadata",
        "schema_extra": {"validation_alias": METADATA},
    }
    if not column:
        return Field(default=None, **names)
    return Field(
        default_factory=dict,
        sa_type=JSONB,
        sa_column_kwargs={"name": "metadata", "server_default": EMPTY_JSON},
        **names,
    )


# Annotated types shared by more than one model module.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$"
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, max_length=100)]

LANGUAGE_PATTERN = r"^[a-z]{2}$"
Language = Annotated[str, StringConstraints(pattern=LANGUAGE_PATTERN)]
"""An ISO 639-1 language code, as an agent's and a team's language are written."""
"""A team's or an agent's slug: lowercase letters, digits and inner hyphens."""

ConstraintT = TypeVar("ConstraintT", sa.Constraint, sa.Index)


def with_message(constraint: ConstraintT, message: str) -> ConstraintT:
    """`constraint`, with the words of the `ConflictError` a write that breaks it raises.

    `message` is a `str.format` template over the columns the database names in the error's
    detail (`Key (team_id, slug)=(...)` gives `{team_id}` and `{slug}`).
    """
    constraint.info["message"] = message
    return constraint
