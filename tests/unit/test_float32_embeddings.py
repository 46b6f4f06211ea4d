"""Embeddings are checked as the `vector` column stores them: as float32."""

import pytest
from pydantic import BaseModel, ValidationError

from skill_store import MemoryCreate, MemoryUpdate, get_settings
from tests.unit.helpers import build

DIMENSIONS = get_settings().embedding_dimensions
MODELS = [MemoryCreate, MemoryUpdate]


def vector(*values: float) -> list[float]:
    return [*values, *[0.0] * (DIMENSIONS - len(values))]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    ("embedding", "message"),
    [
        pytest.param(vector(1e-46), "all zeros", id="subnormal-becomes-zero"),
        pytest.param(vector(1e-30, -1e-30), "all zeros", id="squares-underflow"),
        pytest.param(vector(1e39), "float32 range", id="above-float32"),
        pytest.param(vector(0.5, -3.5e38), "float32 range", id="below-float32"),
        pytest.param(vector(3e38), "too large", id="square-overflows"),
        pytest.param(vector(*[1e18] * DIMENSIONS), "too large", id="norm-overflows"),
    ],
)
def test_embedding_unusable_in_float32_is_rejected(
    model: type[BaseModel], embedding: list[float], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        build(model, embedding=embedding)
    assert [error["loc"] for error in info.value.errors()] == [("embedding",)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "embedding",
    [
        pytest.param(vector(2e-19), id="smallest-usable"),
        pytest.param(vector(1e19), id="largest-usable"),
        pytest.param(vector(*[0.5] * DIMENSIONS), id="ordinary"),
    ],
)
def test_embedding_usable_in_float32_is_accepted(
    model: type[BaseModel], embedding: list[float]
) -> None:
    assert build(model, embedding=embedding).embedding == embedding  # type: ignore[attr-defined]
