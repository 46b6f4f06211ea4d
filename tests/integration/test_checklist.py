"""The checklist of ARCHITECTURE.md ("Adding an entity"), where the database is needed."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from skill_store.models import metadata

POLICIES = text(
    "SELECT c.relname FROM pg_class AS c JOIN pg_policy AS p ON p.polrelid = c.oid"
    " WHERE c.relnamespace = current_schema()::regnamespace AND c.relrowsecurity"
    " AND p.polname = 'team_isolation'"
)


async def test_every_table_has_row_level_security_and_its_team_isolation_policy(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as connection:
        guarded = set((await connection.execute(POLICIES)).scalars())
    assert set(metadata.tables) - guarded == set()
