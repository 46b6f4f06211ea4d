"""Counts over the whole store: rows per table, memories per kind, index sizes."""

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlmodel import SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from skill_store.models import Memory, MemoryStatus, MemoryTier, MemoryType, Team
from skill_store.repositories.base import translated_errors

_INDEX_SIZES = sa.text(
    "SELECT indexrelname, pg_relation_size(indexrelid) FROM pg_stat_user_indexes ORDER BY 2 DESC, 1"
)


@dataclass(frozen=True)
class MemoryGroup:
    """How many memories of a team have one type, tier and status."""

    team: str
    """The team's slug."""
    memory_type: MemoryType
    tier: MemoryTier
    status: MemoryStatus
    count: int


class StatsRepository:
    """Read-only counts across every team, for operators (not for a team-scoped session)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def rows_per_table(self) -> dict[str, int]:
        """The number of rows of every table of the models, in dependency order."""
        counts = {}
        async with translated_errors():
            for table in SQLModel.metadata.sorted_tables:
                statement = select(func.count()).select_from(table)
                counts[table.name] = int((await self.session.exec(statement)).one())
        return counts

    async def memory_groups(self) -> Sequence[MemoryGroup]:
        """Memories counted per team slug, type, tier and status, in that order."""
        keys = (col(Team.slug), col(Memory.memory_type), col(Memory.tier), col(Memory.status))
        statement = (
            sa.select(*keys, func.count())
            .select_from(Memory)
            .join(Team, col(Team.id) == col(Memory.team_id))
            .group_by(*keys)
            .order_by(*keys)
        )
        async with translated_errors():
            rows = (await self.session.exec(statement)).all()  # type: ignore[call-overload]
        return [MemoryGroup(*row) for row in rows]

    async def index_sizes(self) -> dict[str, int]:
        """The size in bytes of every index of the store's tables, largest first."""
        async with translated_errors():
            rows = (await self.session.exec(_INDEX_SIZES)).all()  # type: ignore[call-overload]
        return {name: size for name, size in rows}
