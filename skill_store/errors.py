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


class AccessDeniedError(SkillStoreError, PermissionError):
    """The session may not do this: e.g. write another team's rows from a team-scoped session."""

    def __init__(self, message: str, table: str | None = None) -> None:
        super().__init__(message)
        self.table = table


class EmbeddingDimensionError(SkillStoreError, ValueError):
    """An embedding's length differs from the database column's dimension."""

    def __init__(self, expected: int, got: int) -> None:
        super().__init__(f"embedding has {got} dimensions; expected {expected}")
        self.expected = expected
        self.got = got


class EmbeddingModelError(SkillStoreError, ValueError):
    """A query embedded by one model would be compared with memories embedded by another."""

    def __init__(self, stored: list[str], query: str) -> None:
        models = " and ".join(repr(model) for model in stored)
        super().__init__(
            f"the team's memories were embedded with {models}, the query with {query!r}:"
            " vectors of different models cannot be compared; search with the memories'"
            " embedder, or embed them again with this one"
        )
        self.stored = stored
        self.query = query


class EmbeddingServiceError(SkillStoreError):
    """The embedding service could not be reached or did not return embeddings."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EmbeddingMigrationError(SkillStoreError):
    """An embedder migration was refused or could not go on; the message says why.

    A refusal changes nothing. A migration that stops midway keeps what it did: run it
    again to resume it.
    """


class MemoryFileError(SkillStoreError, ValueError):
    """Lines of a memory file are not valid memories; nothing was imported."""

    def __init__(self, path: object, problems: list[str]) -> None:
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        super().__init__(f"{path}: {len(problems)} bad line(s), nothing imported: {shown}")
        self.problems = problems


class SchemaNotMigratedError(SkillStoreError):
    """The database lacks the schema (or part of it) this package needs."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the database schema is missing or out of date ({detail}):"
            " run `skill-store db upgrade`"
        )


class MigrationRefusedError(SkillStoreError):
    """A migration found data it cannot carry over and stopped; nothing was changed.

    The message says what was found; `hint`, what to do before running it again.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(
            f"the migration stopped and changed nothing: {message}" + (f". {hint}" if hint else "")
        )
        self.hint = hint


class StatementTimeoutError(SkillStoreError):
    """The server cancelled a statement: it ran past `STATEMENT_TIMEOUT` (or was cancelled).

    The statement's changes were rolled back; a repository call leaves the caller's
    transaction usable.
    """


class ConnectionLostError(SkillStoreError):
    """The connection broke during a transaction (server restart, terminated backend).

    The server rolled the transaction back; nothing is retried. Start it again in a new
    session: the pool replaces broken connections.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the connection to the database was lost and the transaction rolled back: {reason}"
        )
        self.reason = reason


class DatabaseUnreachableError(SkillStoreError):
    """The database server could not be reached or started."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the database at {url}: {reason}")
        self.url = url
        self.reason = reason


__all__ = [
    "AccessDeniedError",
    "ConflictError",
    "ConnectionLostError",
    "DatabaseUnreachableError",
    "EmbeddingDimensionError",
    "EmbeddingMigrationError",
    "EmbeddingModelError",
    "EmbeddingServiceError",
    "MemoryFileError",
    "MigrationRefusedError",
    "NotFoundError",
    "SchemaNotMigratedError",
    "SkillStoreError",
    "StatementTimeoutError",
]
