"""Field types and column mixins shared by every model family."""

import math
import uuid
from array import array
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

import sqlalchemy as sa
from pgvector import Vector as PgVector
from pgvector.sqlalchemy import VECTOR
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    FiniteFloat,
    JsonValue,
    StringConstraints,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlmodel import Field, SQLModel

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


FLOAT32_MAX = 3.4028234663852886e38
_SMALLEST_NORM = math.sqrt(1.1754943508222875e-38)  # its square is float32's smallest normal
_LARGEST_NORM = math.sqrt(FLOAT32_MAX / 2)  # a margin for the rounding of a float32 sum


def check_vector(values: Sequence[float]) -> None:
    """Check that a `vector` column can store `values` and compare them by cosine.

    `vector` stores float32 and pgvector sums squares in float32, so the values are checked
    after conversion to float32: each finite and within float32's range, and the squared norm
    neither zero (values so small that they underflow) nor overflowing. Otherwise every
    cosine similarity with the vector would be NaN.

    Args:
        values: The vector's values.

    Raises:
        ValueError: Saying which condition the vector breaks.
    """
    norm = math.hypot(*array("f", values))  # infinite or NaN if any value is
    if not math.isfinite(norm):
        if not all(map(math.isfinite, values)):
            raise ValueError("embedding values must be finite (no NaN or infinity)")
        raise ValueError(
            f"embedding values must be within float32 range (±{FLOAT32_MAX:.7g}):"
            " the vector column stores float32"
        )
    if norm < _SMALLEST_NORM:
        raise ValueError(
            "embedding must not be all zeros (nor so small that it is zero in float32):"
            " its cosine similarity is undefined"
        )
    if norm > _LARGEST_NORM:
        raise ValueError(
            "embedding's norm is too large: its square overflows float32, so its cosine"
            " similarity is undefined"
        )


def _check_embedding(value: list[float]) -> list[float]:
    expected = get_settings().embedding_dimensions
    if len(value) != expected:
        raise ValueError(
            f"embedding has {len(value)} dimensions; expected {expected} (EMBEDDING_DIMENSIONS)"
        )
    check_vector(value)
    return value


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

Embedding = Annotated[list[FiniteFloat], AfterValidator(_check_embedding)]
"""A vector of `EMBEDDING_DIMENSIONS` finite floats that `check_vector` accepts."""


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


INPUT = SQLModel.model_config | {"extra": "forbid"}
"""For the models that take a caller's data: an unknown (e.g. misspelt) key is an error."""

TEXT_ARRAY = ARRAY(sa.Text)
UUID_ARRAY = ARRAY(sa.Uuid)
EMPTY_JSON = sa.text("'{}'::jsonb")
EMPTY_TEXT_ARRAY = sa.text("'{}'::text[]")


class UUIDPrimaryKey(SQLModel):
    """Primary key `id`, made in Python so it is known before the row is flushed."""

    id: uuid.UUID = Field(
        default_factory=uuid.uuid4,
        primary_key=True,
        sa_column_kwargs={"server_default": sa.text("gen_random_uuid()")},
    )


class TeamRowId(SQLModel):
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


class CreatedAt(SQLModel):
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


# Annotated types shared by more than one model module.
SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]*[a-z0-9]$"
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN, max_length=100)]
"""A team's or an agent's slug: lowercase letters, digits and inner hyphens."""

ConstraintT = TypeVar("ConstraintT", sa.Constraint, sa.Index)


def with_message(constraint: ConstraintT, message: str) -> ConstraintT:
    """`constraint`, with the words of the `ConflictError` a write that breaks it raises.

    `message` is a `str.format` template over the columns the database names in the error's
    detail (`Key (team_id, slug)=(...)` gives `{team_id}` and `{slug}`).
    """
    constraint.info["message"] = message
    return constraint
