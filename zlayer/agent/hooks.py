"""The two things the service manager tells the rest of the node about replicas: networking and the proxy.

Both are optional: without a network hook replicas share the host network (``127.0.0.1``), without a proxy hook no
listener is opened. The daemon wires :mod:`zlayer.net` and :mod:`zlayer.proxy` behind these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from zlayer.agent.specview import ServiceView


@dataclass(frozen=True)
class Backend:
    """One healthy replica a proxy listener may send traffic to."""

    container: str
    address: str
    port: int


class NetworkHook(Protocol):
    async def attach(self, deployment: str, service: str, container: str, pid: int) -> str:
        """Give the container (whose init is ``pid``) an interface; returns its address."""
        ...

    async def detach(self, deployment: str, service: str, container: str) -> None: ...


class ProxyHook(Protocol):
    async def update_service(self, deployment: str, service: ServiceView, backends: list[Backend]) -> None:
        """Open or update the service's endpoint listeners, balancing over ``backends`` (may be empty)."""
        ...

    async def remove_service(self, deployment: str, service: str) -> None: ...

    async def update_external(self, deployment: str, name: str, spec: dict[str, Any]) -> None:
        """Open or update the endpoints of ``externals.<name>``, sending to its fixed ``backends``."""
        ...

    async def remove_external(self, deployment: str, name: str) -> None: ...


__all__ = ["Backend", "NetworkHook", "ProxyHook"]
