"""Networking on one node: bridge, veth per container, IPAM, nftables NAT and port mappings, service DNS."""

from __future__ import annotations

from zlayer.net.dns import DnsServer, service_records
from zlayer.net.node import Ipam, NetworkError, NodeNetwork, PortMapping, port_mappings

__all__ = ["DnsServer", "Ipam", "NetworkError", "NodeNetwork", "PortMapping", "port_mappings", "service_records"]
