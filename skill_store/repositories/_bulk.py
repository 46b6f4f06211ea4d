"""Bulk writes of memories: their rows in COPY order, and COPY or INSERT that a lost server ends."""

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.exc import DBAPIError

from skill_store.database import abandon_awaited
from skill_store.models import MemoryCreate
from skill_store.repositories.base import OUT_OF_STEP, connection_lost

COPY_COLUMNS = (
    "id",
    "team_id",
    "agent_id",
    "user_id",
    "memory_type",
    "content",
    "subject",
    "embedding",
    "embedding_model",
    "importance",
    "confidence",
    "is_pinned",
    "source_type",
    "source_conversation_id",
    "source_message_ids",
    "extraction_model",
    "contradicts",
    "related_to",
    "metadata",
    "tier",
    "expires_at",
)
"""The `memory` columns `add_many` copies: every field of `MemoryCreate` but the tags, and the id.

The others (`status`, `version`, `access_count`, the timestamps...) take their defaults.
"""

TAG_COPY_COLUMNS = ("id", "team_id", "memory_id", "tag")


def uuid4s(count: int) -> list[uuid.UUID]:
    """`count` random UUIDs as `uuid.uuid4()` makes them, from one read of the OS's source."""
    random = os.urandom(16 * count)
    return [uuid.UUID(bytes=random[at : at + 16], version=4) for at in range(0, 16 * count, 16)]


def memory_records(
    items: Sequence[MemoryCreate],
    ids: Sequence[uuid.UUID],
    tags: list[tuple[uuid.UUID, uuid.UUID, str]],
    moment: datetime | None,
    batches: Mapping[uuid.UUID, int] | None,
) -> Iterator[tuple[Any, ...]]:
    """The `memory` rows of `items` in `COPY_COLUMNS` order, with their `ids`.

    With a `moment`, each row then has its `created_at` and `last_accessed_at`: the item's
    `created_at`, else `moment`. With `batches`, each row ends with its team's load batch
    (None for a team without one). A generator, so that asyncpg encodes and sends rows
    while the next are made; each memory's distinct tags are appended to `tags` as (team
    id, memory id, tag).
    """
    for item, memory_id in zip(items, ids, strict=True):
        tags.extend((item.team_id, memory_id, tag) for tag in dict.fromkeys(item.tags))
        dates = () if moment is None else (item.created_at or moment,) * 2
        batch = () if batches is None else (batches.get(item.team_id),)
        yield (
            memory_id,
            item.team_id,
            item.agent_id,
            item.user_id,
            item.memory_type.value,
            item.content,
            item.subject,
            item.embedding,
            item.embedding_model,
            item.importance,
            item.confidence,
            item.is_pinned,
            item.source_type.value,
            item.source_conversation_id,
            item.source_message_ids,
            item.extraction_model,
            item.contradicts,
            item.related_to,
            json.dumps(item.metadata_json),
            item.tier.value,
            item.expires_at,
            *dates,
            *batch,
        )


async def copy_records(
    driver: Any, table: str, records: Iterable[Any], columns: Sequence[str]
) -> None:
    """`COPY table (columns) FROM STDIN (FORMAT binary)` on the asyncpg connection."""
    rows = _while_connected(driver, records)
    async with driver_errors(f"COPY {table} FROM STDIN"):
        await until_lost(
            driver, driver.copy_records_to_table(table, records=rows, columns=list(columns))
        )


def _while_connected(driver: Any, records: Iterable[Any]) -> Iterator[Any]:
    """`records`, until the asyncpg connection's socket fails.

    Otherwise asyncpg would encode and write the rest into the closed socket (asyncio logs a
    warning for each write) before it notices.

    Raises:
        ConnectionLostError: If the socket failed.
    """
    transport = driver._transport  # asyncpg has no public way
    for record in records:
        if transport.is_closing():
            raise connection_lost()
        yield record


async def insert_records(
    driver: Any, table: str, records: Iterable[Any], columns: Sequence[str]
) -> None:
    """`INSERT INTO table (columns)` each record, pipelined on the asyncpg connection."""
    placeholders = ", ".join(f"${position}" for position in range(1, len(columns) + 1))
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})"
    async with driver_errors(statement):
        await until_lost(driver, driver.executemany(statement, list(records)))


_LOST = (
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.AdminShutdownError,  # the server is stopping, or its postmaster died
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)


async def until_lost(driver: Any, operation: Awaitable[None]) -> None:
    """Await `operation` on the asyncpg connection `driver`, or until the connection is lost.

    asyncpg does not wake a `COPY` that waits for a full socket to drain when the connection
    drops: it would wait for ever. The operation is cancelled as soon as the connection
    closes instead. A connection cut mid-operation can also leave asyncpg out of step with
    the server (an operation "in progress" that never ends): it is closed, which rolls
    the transaction back, rather than used again.

    Raises:
        ConnectionLostError: If the connection was lost, or closed for being out of step
            (either way the server rolled back).
    """
    task = asyncio.ensure_future(_in_step(driver, operation))

    def lost(_connection: Any) -> None:
        task.cancel()

    driver.add_termination_listener(lost)
    try:
        await task
    except asyncio.CancelledError as error:
        current = asyncio.current_task()
        if not driver.is_closed() or (current is not None and current.cancelling()):
            raise  # the caller cancelled
        raise connection_lost() from error
    except (*_LOST, *OUT_OF_STEP) as error:
        if isinstance(error, ValueError):
            raise  # a value the driver cannot encode: the connection is fine
        raise connection_lost(error) from error
    except asyncpg.PostgresError as error:
        if driver.is_closed():
            raise connection_lost(error) from error
        raise
    finally:
        driver.remove_termination_listener(lost)


async def _in_step(driver: Any, operation: Awaitable[None]) -> None:
    """`operation`; should it leave the connection out of step, the connection is closed.

    At once, before the event loop reads the server's end of the connection: a `COPY`
    that cannot start (asyncpg read the server's last words, a FATAL error, while the
    connection was idle) leaves behind the waiter it made first, outside its `try`, and
    closing the connection sets an exception on that waiter, which nobody awaits. It is
    marked retrieved here, or asyncio would log "Future exception was never retrieved".
    """
    try:
        await operation
    except (*_LOST, *OUT_OF_STEP) as error:
        if not isinstance(error, ValueError):
            abandon_awaited(driver)
            driver.terminate()
        raise


@asynccontextmanager
async def driver_errors(statement: str) -> AsyncIterator[None]:
    """Asyncpg's own exceptions, raised as SQLAlchemy's `DBAPIError` like any other statement's.

    So `translated_errors` turns e.g. a foreign-key violation into `ConflictError`.
    """
    try:
        yield
    except asyncpg.PostgresError as error:
        raise DBAPIError(statement, None, error) from error
