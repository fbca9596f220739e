"""Persistent state of the node agent: the :class:`Store` protocol and its SQLite backend."""

from __future__ import annotations

from zlayer.state.protocol import (
    DEPLOYMENT_STATES,
    ContainerRecord,
    CronRecord,
    DeploymentRecord,
    EventRecord,
    JobExecutionRecord,
    ServiceRecord,
    Store,
)
from zlayer.state.sqlite import SqliteStore, StateError, now_rfc3339
from zlayer.state.switch import SwitchingStore

__all__ = [
    "DEPLOYMENT_STATES",
    "ContainerRecord",
    "CronRecord",
    "DeploymentRecord",
    "EventRecord",
    "JobExecutionRecord",
    "ServiceRecord",
    "SqliteStore",
    "StateError",
    "Store",
    "SwitchingStore",
    "now_rfc3339",
]
