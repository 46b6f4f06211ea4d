"""Benchmarks of skill_store against raw asyncpg, on synthetic data (see BENCHMARKS.md)."""
