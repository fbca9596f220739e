"""The encrypted overlay between nodes: userspace WireGuard with a C data path.

``Interface`` (interface.py) is one WireGuard interface: the C data path ``zlayer.overlay._wg`` (csrc/wg/: TUN, UDP,
ChaCha20-Poly1305, replay window, batching and offloads, worker threads with the GIL released) plus the handshake
(noise.py: Noise_IKpsk2, mac1/mac2, cookie replies), the protocol's timers, and the UAPI socket (uapi.py) that
``wg show`` / ``wg set`` drive. ``python -m zlayer.overlay IFNAME`` runs one in the foreground.
addressing.py cuts the cluster CIDR into a slice per node behind a ``SliceBook`` the cluster store can implement;
cluster.py holds the slices and every node's key and endpoint in etcd and runs the node's interface in a cluster.
"""

from zlayer.overlay.addressing import AddressPool, FileSliceBook, SliceAllocator, SliceBook
from zlayer.overlay.interface import Interface, Peer, PeerStatus, Timers
from zlayer.overlay.uapi import UapiServer

__all__ = [
    "AddressPool",
    "FileSliceBook",
    "Interface",
    "Peer",
    "PeerStatus",
    "SliceAllocator",
    "SliceBook",
    "Timers",
    "UapiServer",
]
