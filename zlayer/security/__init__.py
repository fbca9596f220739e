"""Identity and secrets, below the API: accounts, groups, grants and the decision every route asks for
(:mod:`~zlayer.security.rbac`, :mod:`~zlayer.security.service`), the audit log, and the store behind them
(:mod:`~zlayer.security.store`)."""

from zlayer.security.rbac import ANONYMOUS, KINDS, LOCAL_ADMIN, Actor, Grant, Level
from zlayer.security.service import Security
from zlayer.security.store import SecurityStore, SqliteSecurityStore

__all__ = ["ANONYMOUS", "KINDS", "LOCAL_ADMIN", "Actor", "Grant", "Level", "Security", "SecurityStore",
           "SqliteSecurityStore"]  # fmt: skip
