"""Overlay addressing: the cluster CIDR (ZLayer's 10.200.0.0/16) cut into one slice per node, and addresses inside a
node's slice, as ZLayer's ``NodeSliceAllocator`` and ``IpAllocator`` hand them out.

A node's slice is the /28 (by default) at FNV-1a-64(node id) mod the number of slices, or the next free one after
it: the same node asks again and gets the same slice, and two nodes never share one because every assignment goes
through a :class:`SliceBook`, whose ``claim`` is a compare-and-set. :class:`FileSliceBook` keeps the book in a 0600
JSON file (one node, or tests); the cluster store implements the same two methods to make the book cluster-wide.
Inside a slice, :class:`AddressPool` gives the first free host address (the first one is the node's own).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from zlayer.errors import OverlayError
from zlayer.paths import write_atomic

CLUSTER_CIDR = "10.200.0.0/16"
SLICE_PREFIX = 28
MTU = 1420  # 1500 minus WireGuard's 80 bytes of IPv6, UDP and data-message overhead

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


def fnv1a64(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


class SliceBook(Protocol):
    """Who holds which slice of the cluster CIDR. ``claim`` is atomic: it records ``node`` as the holder of
    ``cidr`` and returns True only if no other node holds it (a node re-claiming its own slice gets True)."""

    def holders(self) -> dict[str, str]:
        """Slice CIDR -> node id, for every assigned slice."""
        ...

    def claim(self, cidr: str, node: str) -> bool: ...

    def release(self, node: str) -> None: ...


class FileSliceBook:
    """A :class:`SliceBook` in one JSON file (``{"cluster_cidr", "slice_prefix", "assigned": [[node, cidr], ...]}``,
    ZLayer's snapshot form), mode 0600, changed under an exclusive lock on a sibling lock file."""

    def __init__(self, path: Path, cluster_cidr: str = CLUSTER_CIDR, slice_prefix: int = SLICE_PREFIX) -> None:
        self.path = path
        self.cluster_cidr = cluster_cidr
        self.slice_prefix = slice_prefix

    @contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self.path.with_name(self.path.name + ".lock")
        with open(lock, "a") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            assigned = self._read()
            before = dict(assigned)
            yield assigned
            if assigned != before:
                doc = {
                    "cluster_cidr": self.cluster_cidr,
                    "slice_prefix": self.slice_prefix,
                    "assigned": [[node, cidr] for cidr, node in sorted(assigned.items())],
                }
                write_atomic(self.path, json.dumps(doc, indent=1) + "\n")

    def _read(self) -> dict[str, str]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise OverlayError(f"cannot read the slice assignments: {e}", where=str(self.path)) from None
        if doc.get("cluster_cidr") != self.cluster_cidr or doc.get("slice_prefix") != self.slice_prefix:
            raise OverlayError(
                f"the file assigns slices of {doc.get('cluster_cidr')}/{doc.get('slice_prefix')}, "
                f"not of {self.cluster_cidr}/{self.slice_prefix}",
                where=str(self.path),
            )
        return {str(cidr): str(node) for node, cidr in doc.get("assigned", [])}

    def holders(self) -> dict[str, str]:
        with self._locked() as assigned:
            return dict(assigned)

    def claim(self, cidr: str, node: str) -> bool:
        with self._locked() as assigned:
            if assigned.get(cidr, node) != node:
                return False
            assigned[cidr] = node
            return True

    def release(self, node: str) -> None:
        with self._locked() as assigned:
            for cidr in [c for c, n in assigned.items() if n == node]:
                del assigned[cidr]


class SliceAllocator:
    """Node slices of ``cluster_cidr`` (``/slice_prefix`` each) recorded in ``book``."""

    def __init__(self, book: SliceBook, cluster_cidr: str = CLUSTER_CIDR, slice_prefix: int = SLICE_PREFIX) -> None:
        self.book = book
        try:
            self.network = ipaddress.ip_network(cluster_cidr)
        except ValueError as e:
            raise OverlayError(f"cluster CIDR {cluster_cidr!r} is not a network: {e}") from None
        if not self.network.prefixlen <= slice_prefix <= self.network.max_prefixlen:
            raise OverlayError(f"slice prefix /{slice_prefix} does not fit in cluster CIDR {cluster_cidr}")
        self.slice_prefix = slice_prefix
        self.count = 1 << (slice_prefix - self.network.prefixlen)

    def _slice(self, index: int) -> str:
        base = int(self.network.network_address) + (index << (self.network.max_prefixlen - self.slice_prefix))
        return f"{ipaddress.ip_address(base)}/{self.slice_prefix}"

    def slice_for(self, node: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        """The node's slice: the one it holds, else the first free one from its hash on."""
        for cidr, holder in self.book.holders().items():
            if holder == node:
                return ipaddress.ip_network(cidr)
        start = fnv1a64(node.encode()) % self.count
        for step in range(self.count):
            cidr = self._slice((start + step) % self.count)
            if self.book.claim(cidr, node):
                return ipaddress.ip_network(cidr)
        raise OverlayError(
            f"overlay address space {self.network} is exhausted: all {self.count} /{self.slice_prefix} slices are "
            f"assigned, none is left for node {node}",
            hint="remove nodes that left the cluster, or configure a larger cluster CIDR",
        )

    def release(self, node: str) -> None:
        self.book.release(node)


class AddressPool:
    """Host addresses of one slice, first free first (IPv4 skips the network and broadcast addresses)."""

    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, taken: set[str] | None = None) -> None:
        self.network = network
        self.taken: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = {
            ipaddress.ip_address(a) for a in (taken or set())
        }

    def allocate(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        for host in self.network.hosts():
            if host not in self.taken:
                self.taken.add(host)
                return host
        raise OverlayError(
            f"overlay slice {self.network} has no free address ({len(self.taken)} in use)",
            hint="remove containers on this node, or give nodes larger slices",
        )

    def release(self, address: str) -> None:
        self.taken.discard(ipaddress.ip_address(address))
