"""Overlay slices held in etcd (zlayer.overlay.cluster): claims racing from many nodes at once never share a slice,
a node asking again keeps its own, a released slice is free again, and an exhausted CIDR is an error naming it."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from zlayer.cluster.etcd import EtcdProcess
from zlayer.errors import OverlayError
from zlayer.overlay.cluster import EtcdSliceBook, claim_slice
from zlayer.state.etcd import EtcdClient

pytestmark = [pytest.mark.peer]


def test_racing_nodes_get_distinct_slices_and_the_exhausted_cidr_is_named(etcd: EtcdProcess) -> None:
    async def go() -> None:
        clients = [EtcdClient([etcd.member.client_url]) for _ in range(8)]
        try:
            book = EtcdSliceBook(clients[0])
            await clients[0].delete("/zlayer/cluster/overlay/slices/", prefix=True)
            # 8 slices of /28 in a /25; 8 nodes claim at once, each through its own client
            got = await asyncio.gather(
                *(claim_slice(EtcdSliceBook(c), f"n{i}", "10.99.0.0/25") for i, c in enumerate(clients))
            )
            assert len(set(got)) == 8 and all(s.prefixlen == 28 for s in got)
            assert all(s.subnet_of(ipaddress.ip_network("10.99.0.0/25")) for s in got)
            assert await claim_slice(book, "n3", "10.99.0.0/25") == got[3]  # asked again: the same one
            assert (await book.holders())[str(got[3])] == "n3"
            with pytest.raises(OverlayError, match=r"10\.99\.0\.0/25 is exhausted"):
                await claim_slice(book, "n8", "10.99.0.0/25")
            await book.release("n5")
            assert await claim_slice(book, "n8", "10.99.0.0/25") == got[5]
        finally:
            for c in clients:
                await c.close()

    asyncio.run(go())
