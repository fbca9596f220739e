"""The TCP API over TLS once the node is in a cluster: with the node's certificate from the cluster CA, so a join
token and the nodes' calls to each other never cross the network in plain.

A daemon that starts in a cluster serves TLS from its first connection (:meth:`ClusterApiTLS.pair`). One that is
made a cluster's first node (``zlayer node init``) or joins one while it runs switches when it enters: a
:class:`~zlayer.cluster.membership.MembershipHook` whose ``entered`` closes the plain listener (the connections it
holds finish in the background, up to :data:`DRAIN` seconds), binds the port again and returns once the TLS server
accepts — so the ``node init`` that answers its caller already serves TLS, and a join sent right after finds it.
An operator's own certificate (``serve --api-tls-cert``, ``--api-tls-acme``) takes precedence and is never replaced;
a node outside a cluster is unchanged (plain, unless the operator gave a certificate).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

from zlayer.cluster.pki import NodeTLS
from zlayer.state.etcd import EtcdClient

log = logging.getLogger("zlayer.daemon")

DRAIN = 5.0  # seconds the plain listener's open connections (a follow stream) may take to finish after the switch


class ClusterApiTLS:
    """The TCP API's uvicorn server (``servers[index]``, its task ``serving[index]``, its socket
    ``sockets[index]``) and when it serves the cluster certificate."""

    def __init__(self, tls: NodeTLS, bind: str, listener: Callable[[str], socket.socket],
                 config: Callable[[tuple[str, str] | None], Any]) -> None:  # fmt: skip
        self.tls = tls
        self.bind = bind
        self._listener = listener  # bind's socket, listening
        self._config = config  # a uvicorn.Config for the TCP API with this (cert chain, key), or plain for None
        self.servers: list[Any] = []
        self.serving: list[asyncio.Task[None]] = []
        self.sockets: list[socket.socket] = []
        self.index = -1

    def pair(self) -> tuple[str, str] | None:
        """The node's (chain, key) when it is in a cluster now, else None (plain, as a single node)."""
        return self.tls.api_pair() if self.tls.exists() else None

    def attach(self, servers: list[Any], serving: list[asyncio.Task[None]], sockets: list[socket.socket],
               index: int) -> None:  # fmt: skip
        """The daemon's lists, which the switch updates in place (its stop then ends the TLS server)."""
        self.servers, self.serving, self.sockets, self.index = servers, serving, sockets, index

    async def to_tls(self) -> None:
        """Serve the cluster certificate from now on (nothing when the listener does already, or is not up yet:
        a daemon starting in a cluster makes it TLS from the start)."""
        import uvicorn

        if self.index < 0 or self.servers[self.index].config.is_ssl:
            return
        pair = await asyncio.to_thread(self.pair)
        if pair is None:
            return
        old = self.servers[self.index]
        for listening in getattr(old, "servers", []):
            listening.close()  # stop accepting now; its connections run on until DRAIN
        old.config.timeout_graceful_shutdown = DRAIN
        old.should_exit = True
        sock = self._listener(self.bind)
        srv = uvicorn.Server(self._config(pair))
        task = asyncio.create_task(srv.serve(sockets=[sock]), name="zlayer-api-tls")
        self.servers[self.index], self.serving[self.index], self.sockets[self.index] = srv, task, sock
        while not srv.started and not task.done():
            await asyncio.sleep(0.01)
        if task.done() and task.exception() is not None:
            log.error("cluster: the API could not listen over TLS on %s: %s", self.bind, task.exception())
            return
        log.info("cluster: the API on %s serves TLS with this node's cluster certificate", self.bind)

    # MembershipHook ----------------------------------------------------------------------------------------------

    def join_fields(self) -> dict[str, Any]:
        return {}

    async def entered(self, client: EtcdClient, node_id: str, how: str) -> None:
        await self.to_tls()

    async def admitted(self, client: EtcdClient, node_id: str, request: Mapping[str, Any]) -> None:
        return None

    async def left(self, client: EtcdClient, node_id: str, removed: bool) -> None:
        return None


__all__ = ["DRAIN", "ClusterApiTLS"]
