"""The engines' connections: planned per execution, whichever driver."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from skill_store import get_sync_engine


async def test_async_connections_plan_every_execution(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        assert (await connection.execute(text("SHOW plan_cache_mode"))).scalar() == (
            "force_custom_plan"
        )


async def test_sync_connections_plan_every_execution(empty_database_url: str) -> None:
    engine = get_sync_engine(empty_database_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW plan_cache_mode")).scalar() == (
                "force_custom_plan"
            )
    finally:
        engine.dispose()
