"""What the global options decide, handed to every command through click's context object."""

from __future__ import annotations

from dataclasses import dataclass, field

from zlayer.paths import Paths


@dataclass
class CliContext:
    """Global options after parsing: where things live, how to reach the daemon, how to print."""

    paths: Paths
    verbose: int = 0
    runtime: str = "auto"
    host: str | None = None
    token: str | None = None
    state_dir: str | None = None
    background: bool = False
    detach: bool = False
    no_tui: bool = False
    host_network: bool = False
    daemon_name: str = "zlayer"
    extra: dict[str, object] = field(default_factory=dict)
