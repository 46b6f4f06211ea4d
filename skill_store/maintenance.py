"""Housekeeping of a store: what `skill-store maintain` does, to run from cron.

One run:

1. **Retention.** Each team's conversations idle past its `conversation_retention_days`
   (their last message, or their start if they have none, is older) are deleted with their
   messages. The memories learnt from them stay; their link to the conversation and its
   messages is cleared (the audit logs the change, by `MAINTAINER` for `RETENTION_REASON`).
2. **Expiry.** Each team's active memories past their `expires_at` are archived, as
   `MemoryRepository.expire` does.
3. **Statistics.** `VACUUM (ANALYZE)` of the store's tables: the planner's estimates, the
   row counts that the lexical search and the next step read, and the full-text index's
   pending entries.
4. **Indexes.** Every team's own vector indexes that are due are built (see
   `skill_store.team_indexes`: a team past the bound without them, or grown past twice the
   rows its IVF index was made for), and those no team needs are dropped.

Runs take turns: a run that finds another one going (the advisory lock
`MAINTENANCE_LOCK`) does nothing and says so. Nobody running it costs this: conversations
are kept for ever, expired memories are not returned (searches filter them) but stay
`active`, and the statistics are left to autovacuum; indexes are still built by the
processes that write.
"""

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import TypeAdapter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from skill_store.database import begin, get_session_factory
from skill_store.models import metadata
from skill_store.models._types import Moment
from skill_store.repositories import MemoryRepository
from skill_store.team_indexes import index_large_teams

MAINTENANCE_LOCK = 0x736B696C6C6D6E74  # "skillmnt"
"""Key of the session-level advisory lock a maintenance run holds."""

MAINTAINER = "skill-store maintain"
"""The actor the audit names for the changes a maintenance run makes."""

RETENTION_REASON = "conversation past its team's retention"
EXPIRY_REASON = "expired"

RETENTION_BATCH = 500
"""Conversations deleted per transaction, so that no run holds many locks for long."""

# Teams with conversations idle past their retention at :now.
_TEAMS_TO_CLEAR = text("""
SELECT t.id FROM team AS t
WHERE EXISTS (
    SELECT FROM conversation AS c
    WHERE c.team_id = t.id
      AND c.last_message_at
          < CAST(:now AS timestamptz) - make_interval(days => t.conversation_retention_days)
)
ORDER BY t.id""")

# One batch of a team's idle conversations: their memories unlinked, then the conversations
# deleted (their messages go with them); counts of each.
_CLEAR_BATCH = text("""
WITH idle AS MATERIALIZED (
    SELECT c.id, c.message_count FROM conversation AS c
    WHERE c.team_id = :team
      AND c.last_message_at < CAST(:now AS timestamptz)
          - make_interval(days => (SELECT t.conversation_retention_days FROM team AS t
                                   WHERE t.id = :team))
    ORDER BY c.id
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
), unlinked AS (
    UPDATE memory AS m SET source_conversation_id = NULL, source_message_ids = NULL
    FROM idle AS i
    WHERE m.team_id = :team AND m.source_conversation_id = i.id
    RETURNING m.id
), deleted AS (
    DELETE FROM conversation AS c USING idle AS i
    WHERE c.team_id = :team AND c.id = i.id
    RETURNING i.message_count
)
SELECT (SELECT count(*) FROM deleted), (SELECT coalesce(sum(message_count), 0) FROM deleted),
       (SELECT count(*) FROM unlinked)""")

_TEAMS_TO_EXPIRE = text("""
SELECT DISTINCT team_id FROM memory
WHERE status = 'active' AND expires_at <= CAST(:now AS timestamptz)
ORDER BY team_id""")

_moment = TypeAdapter(Moment)

_ATTRIBUTE = text(
    "SELECT set_config('skill_store.actor', :actor, true),"
    " set_config('skill_store.reason', :reason, true)"
)


@dataclass(frozen=True)
class MaintenanceReport:
    """What a maintenance run did."""

    ran: bool
    """False if another run held the lock: this one did nothing."""
    conversations_deleted: int = 0
    messages_deleted: int = 0
    memories_unlinked: int = 0
    """Memories whose source conversation was deleted, their link to it cleared."""
    memories_expired: int = 0
    indexes_built: list[uuid.UUID] = field(default_factory=list)
    """The teams whose index was built or rebuilt."""
    indexes_dropped: int = 0
    tables_analyzed: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def maintain(engine: AsyncEngine, *, now: datetime | None = None) -> MaintenanceReport:
    """Apply retention and expiry, build due team indexes and refresh statistics.

    See the module for each step. Safe to run while the store is in use, and twice at once:
    the second run does nothing.

    Args:
        engine: The database, e.g. from `get_engine()`.
        now: The moment retention and expiry are measured from (default the database's).

    Returns:
        What was done.

    Raises:
        pydantic.ValidationError: If `now` is not an aware date and time.
    """
    started = time.perf_counter()
    async with engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        lock = text("SELECT pg_try_advisory_lock(:key)")
        if not (await autocommit.execute(lock, {"key": MAINTENANCE_LOCK})).scalar_one():
            return MaintenanceReport(ran=False)
        try:
            moment = (
                _moment.validate_python(now)
                if now is not None
                else (await autocommit.execute(text("SELECT now()"))).scalar_one()
            )
            conversations, messages, unlinked = await _apply_retention(engine, moment)
            expired = await _expire(engine, moment)
            tables = [table.name for table in metadata.sorted_tables]
            await _vacuum(autocommit, tables)
            indexes = await index_large_teams(engine)
        finally:
            await autocommit.execute(
                text("SELECT pg_advisory_unlock(:key)"), {"key": MAINTENANCE_LOCK}
            )
    return MaintenanceReport(
        ran=True,
        conversations_deleted=conversations,
        messages_deleted=messages,
        memories_unlinked=unlinked,
        memories_expired=expired,
        indexes_built=indexes.built,
        indexes_dropped=indexes.dropped,
        tables_analyzed=tables,
        seconds=time.perf_counter() - started,
    )


async def _apply_retention(engine: AsyncEngine, now: datetime) -> tuple[int, int, int]:
    """Delete every team's idle conversations, a batch a transaction; the three counts."""
    totals = [0, 0, 0]
    async with begin(engine) as connection:
        teams = (await connection.execute(_TEAMS_TO_CLEAR, {"now": now})).scalars().all()
    for team in teams:
        while True:
            async with begin(engine) as connection:
                await connection.execute(
                    _ATTRIBUTE, {"actor": MAINTAINER, "reason": RETENTION_REASON}
                )
                parameters = {"team": team, "now": now, "batch": RETENTION_BATCH}
                counts = (await connection.execute(_CLEAR_BATCH, parameters)).one()
            totals = [total + int(count) for total, count in zip(totals, counts, strict=True)]
            if counts[0] < RETENTION_BATCH:
                break
    return totals[0], totals[1], totals[2]


async def _expire(engine: AsyncEngine, now: datetime) -> int:
    """Archive every team's active memories past their `expires_at`; how many."""
    async with begin(engine) as connection:
        teams = (await connection.execute(_TEAMS_TO_EXPIRE, {"now": now})).scalars().all()
    expired = 0
    factory = get_session_factory(engine)
    for team in teams:
        async with factory() as session:
            expired += await MemoryRepository(session).expire(
                team_id=team, now=now, actor=MAINTAINER, reason=EXPIRY_REASON
            )
            await session.commit()
    return expired


async def _vacuum(connection: AsyncConnection, tables: list[str]) -> None:
    for table in tables:
        await connection.exec_driver_sql(f'VACUUM (ANALYZE) "{table}"')
