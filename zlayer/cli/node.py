"""``zlayer node``: make this node a cluster, join one, and manage its nodes (ZLayer's commands and flags).

Every command asks the local daemon (started if none runs, as the other commands do); the daemon talks to etcd and
to the leader. ``node list`` and ``node status`` answer on any node; a join goes to the leader."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from zlayer.cli.common import output_option, print_data, print_table, run
from zlayer.errors import UsageError


def _labels(pairs: tuple[str, ...] | list[str], where: str = "--labels") -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        for item in (p for p in pair.split(",") if p.strip()):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"{item!r} is not KEY=VALUE", where=where)
            out[key.strip()] = value.strip()
    return out


def _when(ms: int) -> str:
    if not ms:
        return "never"
    secs = max(0, int(datetime.now(UTC).timestamp() - ms / 1000))
    return f"{secs}s ago"


@click.group("node")
def node() -> None:
    """Cluster nodes: init, join, generate-join-token, list, status, label, set-mode, drain, remove, force-leader."""


@node.command("init")
@click.option("--advertise-addr", envvar="ZLAYER_ADVERTISE_ADDR", required=True,
              help="The address other nodes reach this one at.")  # fmt: skip
@click.option("--api-port", type=int, default=3669, show_default=True, help="Kept for ZLayer's CLI: the API port "
              "is the daemon's --bind.")  # fmt: skip
@click.option("--raft-port", type=int, default=9000, show_default=True, help="etcd's peer port.")
@click.option("--client-port", type=int, default=2379, show_default=True, help="etcd's client port.")
@click.option("--heartbeat-interval", type=float, help="Seconds between liveness renewals [default: serve's, 5].")
@click.option("--dead-after", type=float, help="Seconds without one before a node is dead [default: serve's, 30].")
@click.option("--labels", multiple=True, help="This node's labels, k=v[,k=v...].")
@output_option()
def init(advertise_addr: str, api_port: int, raft_port: int, client_port: int, heartbeat_interval: float | None,
         dead_after: float | None, labels: tuple[str, ...], output: str) -> None:  # fmt: skip
    """Start a cluster on this node: it becomes its leader, its deployments carry over (nothing is redeployed)."""
    body = {"advertise_addr": advertise_addr, "raft_port": raft_port, "client_port": client_port,
            "heartbeat_interval": heartbeat_interval, "dead_after": dead_after, "labels": _labels(labels)}  # fmt: skip
    got = run(lambda c: c.request("POST", "/api/v1/cluster/init", json_body=body))
    if output != "table":
        print_data(got, output)
        return
    click.echo(f"Cluster started: this node is node {got['node_id']} ({got['advertise_addr']}), the leader.")
    click.echo(f"  heartbeat every {got['heartbeat']:g}s, a node is dead after {got['dead_after']:g}s")
    click.echo("  add nodes with: zlayer node generate-join-token, then zlayer node join on each")


def _join(leader: str | None, token: str, advertise_addr: str, mode: str, labels: tuple[str, ...], raft_port: int,
          client_port: int) -> None:  # fmt: skip
    body = {"leader": leader, "token": token, "advertise_addr": advertise_addr, "mode": mode,
            "labels": _labels(labels), "raft_port": raft_port, "client_port": client_port}  # fmt: skip
    got = run(lambda c: c.request("POST", "/api/v1/cluster/connect", json_body=body))
    click.echo(f"Joined the cluster as node {got['node_id']} ({got['role']}) through {got['leader']}.")


_JOIN_OPTIONS = [
    click.option(
        "--advertise-addr",
        envvar="ZLAYER_ADVERTISE_ADDR",
        required=True,
        help="The address other nodes reach this one at.",
    ),
    click.option(
        "--mode",
        type=click.Choice(["full", "replicate"]),
        default="full",
        show_default=True,
        help="full: a voter when the voter rule wants one; replicate: always a learner.",
    ),
    click.option("--labels", multiple=True, help="This node's labels, k=v[,k=v...]."),
    click.option("--api-port", type=int, default=3669, show_default=True, help="Kept for ZLayer's CLI."),
    click.option("--raft-port", type=int, default=9000, show_default=True, help="etcd's peer port."),
    click.option("--client-port", type=int, default=2379, show_default=True, help="etcd's client port."),
    click.option("--services", help="Kept for ZLayer's CLI (replicate mode's service list)."),
]


def _join_options(f: Any) -> Any:
    for opt in reversed(_JOIN_OPTIONS):
        f = opt(f)
    return f


@node.command("join")
@click.argument("leader_addr")
@click.option("--token", envvar="ZLAYER_JOIN_TOKEN", required=True, help="A token from generate-join-token.")
@_join_options
def join_cmd(leader_addr: str, token: str, advertise_addr: str, mode: str, labels: tuple[str, ...], api_port: int,
             raft_port: int, client_port: int, services: str | None) -> None:  # fmt: skip
    """Join this node to the cluster whose leader's API is LEADER_ADDR (host:3669)."""
    _join(leader_addr, token, advertise_addr, mode, labels, raft_port, client_port)


@click.command("join")
@click.argument("token")
@_join_options
def join(token: str, advertise_addr: str, mode: str, labels: tuple[str, ...], api_port: int, raft_port: int,
         client_port: int, services: str | None) -> None:  # fmt: skip
    """Join this node to the cluster a join token names (its API endpoint travels in the token)."""
    _join(None, token, advertise_addr, mode, labels, raft_port, client_port)


@node.command("generate-join-token")
@click.argument("deployment", required=False)
@click.option("--ttl", default="24h", show_default=True, help="How long the token is valid (30m, 24h, 7d).")
@click.option("-a", "--api", help="Kept for ZLayer's CLI: the token carries this node's API endpoint.")
@click.option("-s", "--service", help="Kept for ZLayer's CLI.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the token.")
def generate_join_token(deployment: str | None, ttl: str, api: str | None, service: str | None, quiet: bool) -> None:
    """Print a signed, single-use join token (Ed25519) carrying this node's API endpoint."""
    got = run(lambda c: c.request("POST", "/api/v1/nodes/join-token", params={"ttl": ttl}))
    if quiet:
        click.echo(got["token"])
        return
    expires = datetime.fromtimestamp(got["expires_at"], UTC).isoformat(timespec="seconds")
    click.echo(f"Join token (single use, valid until {expires}, leader {got['leader_endpoint']}):")
    click.echo(got["token"])
    click.echo(f"\nOn the new node: zlayer node join {got['leader_endpoint']} --token TOKEN --advertise-addr ITS_IP")


@node.command("list")
@output_option()
def list_cmd(output: str) -> None:
    """Every node of the cluster: role, status, mode, address, last heartbeat."""
    nodes = run(lambda c: c.request("GET", "/api/v1/cluster/nodes"))
    if output != "table":
        print_data(nodes, output)
        return
    rows = [(n["id"], n["advertise_addr"], n["role"], n["status"], n["mode"], _when(n["last_heartbeat"]),
             ",".join(f"{k}={v}" for k, v in sorted(n["labels"].items()))) for n in nodes]  # fmt: skip
    print_table(["ID", "ADDRESS", "ROLE", "STATUS", "MODE", "HEARTBEAT", "LABELS"], rows)


node.add_command(list_cmd, "ls")


@node.command("status")
@click.argument("node_id", required=False)
@output_option()
def status(node_id: str | None, output: str) -> None:
    """One node's details (this node's when ID is left out): resources, GPUs, labels, role, status."""

    async def go(c: Any) -> dict[str, Any]:
        which = node_id or (await c.request("GET", "/api/v1/cluster/self"))["node_id"]
        return dict(await c.request("GET", f"/api/v1/nodes/{which}"))

    got = run(go)
    if output != "table":
        print_data(got, output)
        return
    r = got["resources"]
    click.echo(f"Node {got['id']} ({got['address']}): {got['status']}, {got['role']}, mode {got['mode']}")
    click.echo(f"  api: {got['api_endpoint']}   labels: " + (
        ", ".join(f"{k}={v}" for k, v in sorted(got["labels"].items())) or "none"))  # fmt: skip
    click.echo(f"  platform: {got.get('os') or '?'}/{got.get('arch') or '?'}")
    click.echo(f"  cpu: {r['cpu_total']:g} cores   memory: {r['memory_total'] / 2**30:.1f} GiB   "
               f"disk: {r['disk_total'] / 2**30:.1f} GiB")  # fmt: skip
    for g in r["gpus"]:
        click.echo(f"  gpu {g['index']}: {g['vendor']} {g['model']} ({g['memory_mb']} MiB)")
    if not r["gpus"]:
        click.echo("  gpus: none")


@node.command("label")
@click.argument("node_id")
@click.argument("labels", nargs=-1)
@click.option("--remove", "-r", multiple=True, help="A label key to remove.")
def label(node_id: str, labels: tuple[str, ...], remove: tuple[str, ...]) -> None:
    """Set labels (k=v ...) on a node, or remove some; placement's node_selector matches them."""
    if not labels and not remove:
        raise UsageError("give labels k=v, or --remove KEY", where="labels")
    body = {"labels": _labels(labels, "labels"), "remove": list(remove)}
    got = run(lambda c: c.request("POST", f"/api/v1/cluster/nodes/{node_id}/labels", json_body=body))
    click.echo(f"node {node_id}: " + (", ".join(f"{k}={v}" for k, v in sorted(got["labels"].items())) or "no labels"))


@node.command("set-mode")
@click.argument("node_id")
@click.option("--mode", type=click.Choice(["full", "replicate"]), required=True)
def set_mode(node_id: str, mode: str) -> None:
    """Change a node's mode: full (a voter when the rule wants one) or replicate (a learner)."""
    got = run(lambda c: c.request("PUT", f"/api/v1/cluster/nodes/{node_id}/mode", json_body={"mode": mode}))
    click.echo(f"node {node_id}: mode {got['mode']}")


@node.command("drain")
@click.argument("node_id")
@click.option("--undo", is_flag=True, help="Make the node ready again (what moved away is not moved back).")
@output_option()
def drain(node_id: str, undo: bool, output: str) -> None:
    """Move a node's replicas to the ready nodes and give it no new ones, as kubectl drain does.

    The leader places each replica elsewhere and the node stops its own once the replacement runs healthy there,
    so the service keeps answering. A replica no other node may take (its node_selector matches only this node,
    say) stops and waits, pending: `zlayer status` says why. --undo makes the node ready again: new replicas may
    be placed there, but those that moved away stay where they run now."""
    got = run(lambda c: c.request("PUT", f"/api/v1/cluster/nodes/{node_id}/{'undrain' if undo else 'drain'}"))
    if output != "table":
        print_data(got, output)
        return
    if undo:
        click.echo(f"node {node_id}: {got['status']} (new replicas may go there; none is moved back)")
        return
    moved, pending, unmoved = got.get("moved", []), got.get("pending", []), got.get("unmoved", [])
    if not (moved or pending or unmoved):
        click.echo(f"node {node_id}: {got['status']} (it ran no replicas)")
        return
    click.echo(f"node {node_id}: {got['status']}, {len(moved)} replicas moved, {len(pending)} pending"
               + (f", {len(unmoved)} not placed yet" if unmoved else ""))  # fmt: skip
    for m in moved:
        click.echo(f"  moved   {m['deployment']}/{m['service']} replica {m['replica']} to node {m['to']}")
    for m in pending:
        click.echo(f"  pending {m['deployment']}/{m['service']} replica {m['replica']}: {m['reason']}")
    for m in unmoved:
        click.echo(f"  waiting {m['deployment']}/{m['service']} replica {m['replica']}: the leader has not placed it")
    if moved:
        click.echo(f"node {node_id} stops each moved replica once its replacement runs healthy (see zlayer ps)")


@node.command("remove")
@click.argument("node_id")
def remove(node_id: str) -> None:
    """Take a node out of the cluster (its etcd member leaves, its record goes)."""
    run(lambda c: c.request("DELETE", f"/api/v1/cluster/nodes/{node_id}"))
    click.echo(f"node {node_id} removed")


@node.command("force-leader")
@click.option("-y", "--yes", is_flag=True, help="Do not ask.")
def force_leader(yes: bool) -> None:
    """Disaster recovery: make this node, the last one standing, a cluster of one with the state it has."""
    if not yes:
        click.confirm("This node becomes a cluster of one; the others must join again. Go on?", abort=True)
    got = run(
        lambda c: c.request("POST", "/api/v1/cluster/force-leader", json_body={"confirm": "CONFIRM_FORCE_LEADER"})
    )
    click.echo(f"{got['message']} ({got['preserved_nodes']} nodes, {got['preserved_services']} services kept)")


@node.command("revoke-token")
@click.argument("token")
def revoke_token(token: str) -> None:
    """Revoke a join token (or its SHA-256): a node can no longer join with it."""
    got = run(lambda c: c.request("POST", "/api/v1/cluster/revoke-token", json_body={"token": token}))
    click.echo(f"revoked {got['revoked']}")
