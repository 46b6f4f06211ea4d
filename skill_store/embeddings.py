"""Text embeddings: one small `Embedder` interface, an offline default and an HTTP client.

`HashingEmbedder` needs no network and no model; `OpenAIEmbedder` calls any service that
speaks the OpenAI embeddings protocol. `embedder_from_settings` picks one from the settings.
"""

import asyncio
import functools
import hashlib
import logging
import math
import re
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from skill_store.errors import EmbeddingDimensionError, EmbeddingServiceError
from skill_store.settings import DEFAULT_EMBEDDING_BASE_URL, Settings, get_settings

if TYPE_CHECKING:
    import httpx  # imported when an OpenAIEmbedder first embeds: the offline default needs none

_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits
_NO_WORDS = "\x00<empty>"  # the one feature of a text without words
_MAX_RETRY_AFTER = 60.0  # seconds; a longer `Retry-After` is cut to this
_sleep = asyncio.sleep  # replaced by tests that record the delays

HASHING_MODEL = "hashing"
"""The `model` of every `HashingEmbedder`: its vectors depend only on the text and the length."""

logger = logging.getLogger(__name__)


class Embedder(Protocol):
    """Turns texts into vectors of a fixed length."""

    @property
    def model(self) -> str:
        """Name of what makes the vectors; those of different models must not be compared."""
        ...

    @property
    def dimensions(self) -> int:
        """Length of every vector `embed` returns."""
        ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one vector per text, in the order of `texts` (`[]` for no texts)."""
        ...


class HashingEmbedder:
    """Offline embedder: signed feature hashing of word unigrams and bigrams, L2-normalised.

    Words are the runs of letters and digits of the lower-cased text. Each word and each
    pair of adjacent words adds +1 or -1 (chosen by a BLAKE2b hash, stable across processes)
    at a position chosen by the same hash. Texts that share words get similar vectors, but
    synonyms, paraphrases and translations do not: this captures lexical overlap, not
    meaning. Use a model-backed embedder such as `OpenAIEmbedder` for semantic search.

    A text of n words has 2n - 1 features (one, the empty-text marker, if it has no words).
    An odd count of ±1 cannot cancel out in every position, so no vector is all zeros.

    Args:
        dimensions: Length of the vectors, at least 1.

    Raises:
        ValueError: If `dimensions` is less than 1.
    """

    def __init__(self, dimensions: int) -> None:
        if dimensions < 1:
            raise ValueError(f"dimensions must be at least 1; got {dimensions}")
        self.model = HASHING_MODEL
        self.dimensions = dimensions

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimensions={self.dimensions})"

    def embed_one(self, text: str) -> list[float]:
        """Return the unit vector of one text.

        Args:
            text: Any text, possibly empty.

        Returns:
            A list of `dimensions` floats with Euclidean norm 1.
        """
        words = _WORD.findall(text.lower())
        features = words + [f"{a} {b}" for a, b in pairwise(words)]
        vector = [0.0] * self.dimensions
        for feature in features or [_NO_WORDS]:
            number = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest())
            vector[(number >> 1) % self.dimensions] += 1.0 if number & 1 else -1.0
        norm = math.sqrt(sum(value * value for value in vector))
        return [value / norm for value in vector]

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one unit vector per text, in order.

        Args:
            texts: The texts to embed.

        Returns:
            The vectors, `[]` if `texts` is empty.
        """
        return [self.embed_one(text) for text in texts]


class OpenAIEmbedder:
    """Client of an OpenAI-compatible embeddings service (OpenAI or a local server).

    Sends `POST {base_url}/embeddings` in batches of at most `batch_size` texts. HTTP 429
    and 5xx answers are retried up to `max_retries` times (so at most `max_retries + 1`
    requests per batch), waiting `Retry-After` seconds if the service says so, else
    `retry_delay`, then twice as long each time. Other failures are not retried.

    Args:
        model: Model name sent to the service.
        api_key: Sent as `Authorization: Bearer <key>`; never shown in errors or reprs.
        dimensions: Length of the vectors asked for and required in the answer.
        base_url: URL the path `/embeddings` is appended to.
        timeout: Seconds allowed for each request.
        max_retries: Retries of a batch after a 429 or 5xx answer.
        client: Client to send requests with (left open); by default each `embed` call
            opens and closes its own.
        retry_delay: Seconds before the first retry when there is no `Retry-After`.
        batch_size: Most texts sent in one request.
    """

    def __init__(
        self,
        model: str,
        api_key: SecretStr | str,
        dimensions: int,
        base_url: str = DEFAULT_EMBEDDING_BASE_URL,
        timeout: float = 30.0,
        max_retries: int = 3,
        client: "httpx.AsyncClient | None" = None,
        retry_delay: float = 0.5,
        batch_size: int = 256,
    ) -> None:
        self.model = model
        self.dimensions = dimensions
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.batch_size = batch_size
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self._client = client

    def __repr__(self) -> str:
        return (
            f"OpenAIEmbedder(model={self.model!r}, dimensions={self.dimensions},"
            f" base_url={self.base_url!r})"
        )

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Return one vector per text, in order, asking the service batch by batch.

        Args:
            texts: The texts to embed.

        Returns:
            The vectors, `[]` (without a request) if `texts` is empty.

        Raises:
            EmbeddingServiceError: If the service is unreachable, rejects the key or the
                request, keeps failing after the retries, or answers something malformed.
            EmbeddingDimensionError: If a vector's length is not `dimensions`.
        """
        if not texts:
            return []
        if self._client is not None:
            return await self._embed_all(self._client, texts)
        import httpx

        async with httpx.AsyncClient() as client:
            return await self._embed_all(client, texts)

    async def _embed_all(
        self, client: "httpx.AsyncClient", texts: Sequence[str]
    ) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors += await self._embed_batch(client, list(texts[start : start + self.batch_size]))
        return vectors

    async def _embed_batch(
        self, client: "httpx.AsyncClient", batch: list[str]
    ) -> list[list[float]]:
        url = f"{self.base_url}/embeddings"
        body = {"model": self.model, "input": batch, "dimensions": self.dimensions}
        headers = {"Authorization": f"Bearer {self._api_key.get_secret_value()}"}
        import httpx

        attempt = 1
        while True:
            try:
                response = await client.post(url, json=body, headers=headers, timeout=self.timeout)
            except httpx.HTTPError as error:
                reason = f"{type(error).__name__} {error}".strip()
                raise EmbeddingServiceError(
                    f"cannot reach the embedding service at {url}: {reason}"
                ) from error
            status = response.status_code
            retryable = status == 429 or status >= 500
            if retryable and attempt <= self.max_retries:
                await _sleep(self._delay(attempt, response))
                attempt += 1
                continue
            if status in (401, 403):
                raise EmbeddingServiceError(
                    f"the embedding service rejected the API key (HTTP {status})", status
                )
            if retryable:
                raise EmbeddingServiceError(
                    f"the embedding service still answered HTTP {status} after {attempt}"
                    f" attempts{self._detail(response)}",
                    status,
                )
            if status >= 400:
                raise EmbeddingServiceError(
                    f"the embedding service refused the request (HTTP {status})"
                    f"{self._detail(response)}",
                    status,
                )
            return self._vectors(response, len(batch))

    def _delay(self, attempt: int, response: "httpx.Response") -> float:
        """Seconds to wait before retry number `attempt` (1 for the first retry)."""
        try:
            seconds = float(response.headers.get("Retry-After", "nan"))
        except ValueError:  # an HTTP date
            seconds = math.nan
        if math.isnan(seconds):
            return float(self.retry_delay * 2 ** (attempt - 1))
        return min(max(seconds, 0.0), _MAX_RETRY_AFTER)

    def _detail(self, response: "httpx.Response") -> str:
        """The service's own error message, if any, with the API key blanked out."""
        try:
            message = str(response.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return ""
        key = self._api_key.get_secret_value()
        return f": {message.replace(key, '***') if key else message}"

    def _vectors(self, response: "httpx.Response", count: int) -> list[list[float]]:
        try:
            data: list[dict[str, Any]] = sorted(response.json()["data"], key=lambda d: d["index"])
            vectors = [[float(value) for value in item["embedding"]] for item in data]
        except (ValueError, KeyError, TypeError) as error:
            raise EmbeddingServiceError(
                f"the embedding service sent a malformed answer: {type(error).__name__} {error}"
            ) from None
        if len(vectors) != count:
            raise EmbeddingServiceError(f"asked for {count} embeddings, got {len(vectors)}")
        for vector in vectors:
            if len(vector) != self.dimensions:
                raise EmbeddingDimensionError(expected=self.dimensions, got=len(vector))
        return vectors


def embedder_from_settings(settings: Settings | None = None) -> Embedder:
    """Return the embedder the settings call for.

    Args:
        settings: Settings to read; by default `get_settings()`.

    Returns:
        An `OpenAIEmbedder` if `embedding_api_key` is set (and not empty), else a
        `HashingEmbedder` that logs a warning the first time in the process that it embeds
        a text; both give vectors of `embedding_dimensions`.
    """
    if settings is None:
        settings = get_settings()
    key = settings.embedding_api_key
    if key is None or not key.get_secret_value():
        return _FallbackEmbedder(settings.embedding_dimensions)
    return OpenAIEmbedder(
        settings.embedding_model,
        key,
        settings.embedding_dimensions,
        base_url=settings.embedding_base_url,
    )


class _FallbackEmbedder(HashingEmbedder):
    """The `HashingEmbedder` the settings fall back to: says so when it first embeds a text.

    Not when it is made: a program that embeds nothing (a read, an import of vectors, an
    error first) has nothing to be warned of.
    """

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """As `HashingEmbedder.embed`, after the warning if there is a text."""
        if texts:
            _warn_of_hashing()
        return await super().embed(texts)


@functools.cache
def _warn_of_hashing() -> None:
    """Log, once a process, that texts are embedded by words, not by a model."""
    logger.warning(
        "EMBEDDING_API_KEY is not set: texts are embedded with the offline hashing embedder,"
        " which matches words, not meaning; memories embedded by another model cannot be"
        " searched with it"
    )


__all__ = [
    "HASHING_MODEL",
    "Embedder",
    "HashingEmbedder",
    "OpenAIEmbedder",
    "embedder_from_settings",
]
