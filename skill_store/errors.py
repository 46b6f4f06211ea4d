"""The exceptions users of skill_store catch."""


class SkillStoreError(Exception):
    """Base class of every error this package raises on purpose."""


class DatabaseUnreachableError(SkillStoreError):
    """The database server could not be reached or started."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach the database at {url}: {reason}")
        self.url = url
        self.reason = reason
