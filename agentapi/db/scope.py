"""What the current unit of work may see in the database.

The tenant layer (tenants.scoping) decides the scope; the PostgreSQL backend copies it into
transaction-local settings that the row-level security policies read. Keeping the value here, in
plumbing that imports no app, lets the backend stay ignorant of tenants.
"""

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class DatabaseScope:
    organization_ids: tuple[int, ...] = ()
    all_organizations: bool = False
    user_id: int | None = None
    api_key_hash: str = ""
    # The hash of a single-use secret a request presents before its organization is known (an
    # OAuth flow's state): policies let exactly the row it names be read.
    secret_hash: str = ""

    def as_settings(self) -> list[tuple[str, str]]:
        """The PostgreSQL settings (name, value) that express this scope."""
        return [
            ("app.organization_ids", ",".join(str(pk) for pk in self.organization_ids)),
            ("app.all_organizations", "on" if self.all_organizations else "off"),
            ("app.user_id", "" if self.user_id is None else str(self.user_id)),
            ("app.api_key_hash", self.api_key_hash),
            ("app.secret_hash", self.secret_hash),
        ]


NO_SCOPE = DatabaseScope()
_scope: ContextVar[DatabaseScope] = ContextVar("agentapi_db_scope", default=NO_SCOPE)


def current_scope() -> DatabaseScope:
    return _scope.get()


@contextmanager
def use_scope(scope: DatabaseScope):
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)
