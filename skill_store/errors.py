"""The exceptions users of skill_store catch."""


class SkillStoreError(Exception):
    """Base class of every error this package raises on purpose."""


class NotFoundError(SkillStoreError, LookupError):
    """No row has the given id (or it belongs to another team)."""

    def __init__(self, entity: str, key: object) -> None:
        super().__init__(f"{entity} {key} does not exist")
        self.entity = entity
        self.key = key


class ConflictError(SkillStoreError):
    """The change breaks a uniqueness, reference or other database rule; nothing was written."""

    def __init__(self, message: str, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class EmbeddingDimensionError(SkillStoreError, ValueError):
    """An embedding's length differs from the database column's dimension."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"embedding has {got} dimensions; the database expects {expected}")
        self.expected = expected
        self.got = got


class SchemaNotMigratedError(SkillStoreError):
    """The database lacks the schema (or part of it) this package needs."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the database schema is missing or out of date ({detail}):"
            " run `skill-store db upgrade`"
        )


class DatabaseUnreachableError(SkillStoreError):
    """The database server could not be reached or started."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the database at {url}: {reason}")
        self.url = url
        self.reason = reason


__all__ = [
    "ConflictError",
    "DatabaseUnreachableError",
    "EmbeddingDimensionError",
    "NotFoundError",
    "SchemaNotMigratedError",
    "SkillStoreError",
]
