"""``zlayer network ls|inspect|status|peers|dns``: the node's networks and its part of the cluster overlay (its
WireGuard interface, slice and peers with their handshake age and health), over the daemon's
``/api/v1/overlay`` routes."""

from __future__ import annotations

from typing import Any

import click

from zlayer.cli.common import output_option, print_data, print_table, run
from zlayer.errors import NotFoundError

OVERLAY = "overlay"


async def _overlay(c: Any) -> dict[str, Any]:
    st = await c.request("GET", "/api/v1/overlay/status")
    st["peers"] = (await c.request("GET", "/api/v1/overlay/peers"))["peers"]
    st["ip_alloc"] = await c.request("GET", "/api/v1/overlay/ip-alloc")
    return dict(st)


def _age(p: dict[str, Any]) -> str:
    return "never" if p["last_handshake_secs"] is None else f"{p['last_handshake_secs']}s ago"


@click.group("network")
def network() -> None:
    """The node's networks: the cluster overlay (encrypted, WireGuard) and its peers."""


@network.command("ls")
@output_option()
def network_ls(output: str) -> None:
    """List the networks this node is on."""
    st = run(_overlay)
    rows = [{"name": OVERLAY, "driver": "wireguard", "interface": st["interface"], "cidr": st["cidr"],
             "slice": st["slice_cidr"], "peers": st["total_peers"]}]  # fmt: skip
    if output != "table":
        print_data(rows, output)
        return
    print_table(["NAME", "DRIVER", "INTERFACE", "CIDR", "SLICE", "PEERS"], [list(r.values()) for r in rows])


network.add_command(network_ls, "list")


@network.command("inspect")
@click.argument("name", default=OVERLAY)
def network_inspect(name: str) -> None:
    """Everything about a network (``overlay``: the cluster overlay), as JSON."""
    if name != OVERLAY:
        raise NotFoundError(f"no network {name!r} on this node", where="NAME", hint="zlayer network ls")
    print_data(run(_overlay), "json")


@network.command("status")
@output_option()
def network_status(output: str) -> None:
    """The overlay on this node: interface, address, slice, port and how many peers are healthy."""
    st = run(lambda c: c.request("GET", "/api/v1/overlay/status"))
    if output != "table":
        print_data(st, output)
        return
    for key in ("interface", "node_ip", "slice_cidr", "cidr", "port", "mtu", "public_key", "is_leader"):
        click.echo(f"{key + ':':<13}{st[key]}")
    click.echo(f"{'peers:':<13}{st['healthy_peers']}/{st['total_peers']} healthy")


@network.command("peers")
@output_option()
def network_peers(output: str) -> None:
    """The overlay's peers: node, endpoint, slice, time since the last handshake and health."""
    got = run(lambda c: c.request("GET", "/api/v1/overlay/peers"))
    if output != "table":
        print_data(got, output)
        return
    print_table(
        ["NODE", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "HEALTHY", "RX", "TX", "PUBLIC KEY"],
        [[p["node"], p["endpoint"], ",".join(p["allowed_ips"]), _age(p), "yes" if p["healthy"] else "no",
          p["rx_bytes"], p["tx_bytes"], p["public_key"]] for p in got["peers"]],
    )  # fmt: skip


@network.command("dns")
@output_option()
def network_dns(output: str) -> None:
    """The cluster's service DNS on this node: where it listens and the names it answers."""
    got = run(lambda c: c.request("GET", "/api/v1/overlay/dns"))
    if output != "table":
        print_data(got, output)
        return
    if not got["enabled"]:
        click.echo("service DNS: not enabled on this node (it starts with the overlay, in a cluster)")
        return
    port = got["port"]
    click.echo("listening:  " + ", ".join(f"{a}:{port}" for a in got["bind_addrs"]))
    print_table(["NAME"], [[n] for n in got["services"]])
