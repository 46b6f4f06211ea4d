"""Embeddings given as NumPy arrays: checked in one go, kept as float32, listed in JSON."""

import json

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import BaseModel, ValidationError

from skill_store import MemoryCreate, MemoryUpdate, get_settings
from tests.unit.helpers import assert_rejected, build

DIMENSIONS = get_settings().embedding_dimensions
MODELS = [MemoryCreate, MemoryUpdate]


def array(*values: float, dtype: type[np.generic] = np.float32) -> NDArray[np.generic]:
    vector = np.zeros(DIMENSIONS, dtype=dtype)
    vector[: len(values)] = values
    return vector


@pytest.mark.parametrize("model", MODELS)
def test_float32_array_is_kept_as_it_is(model: type[BaseModel]) -> None:
    vector = array(0.6, 0.8)
    assert build(model, embedding=vector).embedding is vector  # type: ignore[attr-defined]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int64, np.uint8])
def test_array_of_other_numbers_becomes_float32(
    model: type[BaseModel], dtype: type[np.generic]
) -> None:
    embedding = build(model, embedding=array(3, 4, dtype=dtype)).embedding  # type: ignore[attr-defined]
    assert isinstance(embedding, np.ndarray)
    assert embedding.dtype == np.float32
    assert embedding[:3].tolist() == [3.0, 4.0, 0.0]


def test_array_is_a_list_in_json_and_an_array_in_python() -> None:
    memory = build(MemoryCreate, embedding=array(0.6, 0.8))
    assert json.loads(memory.model_dump_json())["embedding"][:3] == pytest.approx([0.6, 0.8, 0])
    assert memory.model_dump(mode="json")["embedding"][:2] == pytest.approx([0.6, 0.8])
    assert isinstance(memory.model_dump()["embedding"], np.ndarray)


def test_embedding_array_gives_a_float32_array() -> None:
    listed = build(MemoryCreate, embedding=[0.6, 0.8, *[0.0] * (DIMENSIONS - 2)])
    given = array(0.6, 0.8)
    assert isinstance(listed.embedding, list)
    assert listed.embedding_array is not None
    assert listed.embedding_array.dtype == np.float32
    assert np.array_equal(listed.embedding_array, given)
    assert build(MemoryCreate, embedding=given).embedding_array is given
    assert build(MemoryCreate).embedding_array is None


BAD_ARRAYS = [
    pytest.param(array(0.5).astype(str), "real numbers", id="strings-of-numbers"),
    pytest.param(array(0.5).astype(object), "real numbers", id="objects-that-are-floats"),
    pytest.param(array(0.5).astype(complex), "real numbers", id="complex"),
    pytest.param(array(0.5).astype(bool), "real numbers", id="booleans"),
    pytest.param(array(0.5).reshape(1, -1), "one-dimensional", id="one-row-matrix"),
    pytest.param(array(0.5).reshape(-1, 1), "one-dimensional", id="one-column-matrix"),
    pytest.param(array(0.5)[:-1], f"{DIMENSIONS - 1} dimensions", id="one-short"),
    pytest.param(np.append(array(0.5), 0.5), f"{DIMENSIONS + 1} dimensions", id="one-long"),
    pytest.param(array(1e-40), "all zeros", id="float32-subnormal"),
    pytest.param(array(1e-46, dtype=np.float64), "all zeros", id="zero-in-float32"),
    pytest.param(array(dtype=np.float64), "all zeros", id="all-zeros"),
    pytest.param(array(0.5, 1e39, dtype=np.float64), "float32 range", id="above-float32"),
    pytest.param(array(3e38), "too large", id="square-overflows"),
]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("embedding", "message"), BAD_ARRAYS)
def test_bad_array_is_rejected_saying_why(
    model: type[BaseModel], embedding: NDArray[np.generic], message: str
) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        build(model, embedding=embedding)
    assert [error["loc"] for error in info.value.errors()] == [("embedding",)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_with_a_non_finite_value_is_rejected_at_its_position(
    model: type[BaseModel], bad: float, dtype: type[np.generic]
) -> None:
    vector = array(0.5, dtype=dtype)
    vector[7] = bad
    assert_rejected(model, ("embedding", 7), embedding=vector)
