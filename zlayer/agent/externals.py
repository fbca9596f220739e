"""A deployment's ``externals.<name>`` blocks: proxy endpoints whose backends are fixed ``ip:port`` addresses outside
the node's containers (a database on another host, a legacy service). ZLayer routes them like services; they have no
replicas, so they are published once per deploy and withdrawn when the deployment drops them or goes away."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from zlayer.agent.hooks import ProxyHook
from zlayer.errors import ZLayerError

if TYPE_CHECKING:
    from zlayer.spec.models import ExternalSpec

log = logging.getLogger("zlayer.agent")


class ExternalRoutes:
    """Which externals each deployment has in the proxy, kept in step with its spec."""

    def __init__(self, proxy: ProxyHook | None) -> None:
        self.proxy = proxy
        self._published: dict[str, set[str]] = {}

    async def apply(self, deployment: str, externals: Mapping[str, ExternalSpec]) -> list[str]:
        """Publish every external of the spec and withdraw the ones it no longer has; returns what failed."""
        if self.proxy is None:
            return []
        failures: list[str] = []
        for gone in sorted(self._published.get(deployment, set()) - set(externals)):
            await self.proxy.remove_external(deployment, gone)
        for name, spec in externals.items():
            try:
                await self.proxy.update_external(deployment, name, spec)
            except ZLayerError as e:  # (its earlier routes, if any, stay until it is fixed or removed)
                failures.append(f"externals.{name}: {e}")
        self._published[deployment] = set(externals)
        return failures

    async def remove(self, deployment: str) -> None:
        """Withdraw every external of a deployment that is going away."""
        if self.proxy is None:
            return
        for name in sorted(self._published.pop(deployment, set())):
            try:
                await self.proxy.remove_external(deployment, name)
            except ZLayerError as e:  # the deployment goes anyway; a stale route is logged, not fatal
                log.warning("withdrawing externals.%s of %s: %s", name, deployment, e)


__all__ = ["ExternalRoutes"]
