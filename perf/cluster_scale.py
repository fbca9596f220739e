"""A 1,000-node cluster's control plane at scale: lightweight agents against a real 3-member etcd.

Three ``etcd`` members (:class:`~zlayer.cluster.etcd.EtcdProcess`, as the daemon runs them) on loopback ports, data
dirs under a temp dir removed after. 1,000 simulated agents in this process, each as membership makes a node: its
``nodes/<id>`` record (a :class:`~zlayer.cluster.view.Node`), a lease of ``DEAD_AFTER`` seconds renewed every
``HEARTBEAT`` seconds holding its ``alive/<id>`` key, and a watch on its own node record (where the leader changes its
status or labels). Agents do not each stream the whole assignments prefix: 1,000 such streams in one process would
measure this process decoding 1,000 copies of every write, which a real cluster spreads over 1,000 machines.
The "leader" (also in this process) places 10,000 replicas with :func:`~zlayer.cluster.placement.place` (the mix
of ``perf/placement.py``) and writes them with :class:`~zlayer.cluster.assignments.EtcdAssignments`; it takes a
node without its ``alive/`` key for dead, as membership's monitor does.

Measured:
- ``reconcile_after_death_s``: one loaded node's lease is **revoked** (its ``alive`` key goes at once, as when a node
  leaves or its lease lapses; expiry would add up to ``DEAD_AFTER``); from the revoke's answer to the new
  assignments written (read nodes and assignments back from etcd, place, write the changed services);
- ``etcd_writes_per_s``: etcd revisions per second over ``REST`` seconds at rest (lease keep-alives are not revisions:
  ``keepalives_per_s`` counts them apart);
- ``leader_cpu_pct``: CPU of this process at rest over the same window, which holds the leader's watch **and all
  1,000 agents' heartbeats and watches** (an upper bound of the leader's own).

Target: ``reconcile_after_death_s`` ≤ 1. Run: ``python perf/cluster_scale.py`` (no root, no daemon; needs ``etcd``).
Prints one JSON object on its last line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import free_port
from placement import cluster, deployments

from zlayer.cluster.assignments import EtcdAssignments
from zlayer.cluster.etcd import EtcdMember, EtcdProcess
from zlayer.cluster.membership import ROOT
from zlayer.cluster.placement import place
from zlayer.cluster.view import Assignment, ClusterView, Node
from zlayer.state.etcd import EtcdClient, EtcdError

NODES = int(os.environ.get("CLUSTER_SCALE_NODES", "1000"))
PER_CLIENT = 50  # agents sharing one HTTP client (aiohttp's 100 connections: 50 watch streams + heartbeats)
HEARTBEAT = 2.0
DEAD_AFTER = 10
REST = 10.0


class Agent:
    def __init__(self, node: Node, client: EtcdClient) -> None:
        self.node = node
        self.client = client
        self.lease = 0
        self.beats = 0
        self.seen = 0

    async def join(self) -> None:
        self.lease = await self.client.lease_grant(DEAD_AFTER)
        await self.client.put(ROOT + f"nodes/{self.node.id}", self.node.model_dump(mode="json"))
        await self.client.put(ROOT + f"alive/{self.node.id}", {"since": 0}, lease=self.lease)

    async def heartbeat(self) -> None:
        await asyncio.sleep(random.random() * HEARTBEAT)
        while True:
            try:
                await self.client.lease_keepalive(self.lease)
                self.beats += 1
            except EtcdError:
                pass
            await asyncio.sleep(HEARTBEAT)

    async def watch(self, prefix: str) -> None:
        async for _ in self.client.watch(prefix):
            self.seen += 1


class Leader:
    def __init__(self, client: EtcdClient, specs: dict[str, Any]) -> None:
        self.client = client
        self.cluster = EtcdAssignments(client)
        self.specs = specs
        self.desired = {(d, s): spec.services[s].scale.replicas for d, spec in specs.items() for s in spec.services}

    async def nodes(self) -> list[Node]:
        records = await self.client.range(ROOT + "nodes/")
        alive = {kv.key.rsplit("/", 1)[1] for kv in await self.client.range(ROOT + "alive/")}
        out = []
        for kv in records:
            n = Node.model_validate(kv.json())
            out.append(n if n.id in alive else n.model_copy(update={"status": "dead"}))
        return out

    async def reconcile(self) -> int:
        nodes = await self.nodes()
        current = await self.cluster.assignments()
        result = place(ClusterView(nodes=tuple(nodes), assignments=tuple(current)), self.specs, self.desired,
                       set(self.specs))  # fmt: skip
        before: dict[tuple[str, str], list[Assignment]] = {}
        for a in sorted(current, key=lambda a: a.key):
            before.setdefault((a.deployment, a.service), []).append(a)
        after: dict[tuple[str, str], list[Assignment]] = {}
        for a in result.assignments:
            after.setdefault((a.deployment, a.service), []).append(a)
        changes = {k: after.get(k, []) for k in set(before) | set(after) if before.get(k, []) != after.get(k, [])}
        if changes:
            await self.cluster.put_assignments(changes)
        return len(changes)


async def run(tmp: Path) -> dict[str, Any]:
    ports = [(free_port(), free_port()) for _ in range(3)]
    members = [EtcdMember(f"m{i}", "127.0.0.1", peer, cl) for i, (peer, cl) in enumerate(ports)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    procs = [EtcdProcess(tmp / m.name, m, tmp / f"{m.name}.log") for m in members]
    clients: list[EtcdClient] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        clients = list(await asyncio.gather(*(p.start(initial) for p in procs)))
        endpoints = [m.client_url for m in members]
        rng = random.Random(13)
        nodes = cluster(NODES, rng)
        specs = deployments(NODES, rng)
        agent_clients = [EtcdClient(endpoints[i % 3 :] + endpoints[: i % 3]) for i in range(NODES // PER_CLIENT + 1)]
        clients += agent_clients
        agents = [Agent(n, agent_clients[i // PER_CLIENT]) for i, n in enumerate(nodes)]
        t0 = time.monotonic()
        for i in range(0, len(agents), 100):
            await asyncio.gather(*(a.join() for a in agents[i : i + 100]))
        join_s = time.monotonic() - t0
        tasks += [asyncio.create_task(a.heartbeat()) for a in agents]
        tasks += [asyncio.create_task(a.watch(ROOT + f"nodes/{a.node.id}")) for a in agents]

        leader = Leader(clients[0], specs)
        t0 = time.monotonic()
        placed = await leader.reconcile()
        first_s = time.monotonic() - t0
        replicas = len(await leader.cluster.assignments())

        await asyncio.sleep(HEARTBEAT)  # the heartbeats spread out
        rev0, beats0, cpu0, w0 = (
            await clients[0].revision(),
            sum(a.beats for a in agents),
            time.process_time(),
            time.monotonic(),
        )
        await asyncio.sleep(REST)
        wall = time.monotonic() - w0
        writes = (await clients[0].revision() - rev0) / wall
        cpu_pct = (time.process_time() - cpu0) / wall * 100
        keepalives = (sum(a.beats for a in agents) - beats0) / wall

        load: dict[str, int] = {}
        for a in await leader.cluster.assignments():
            load[a.node_id] = load.get(a.node_id, 0) + 1
        victim = max(load, key=lambda k: load[k])
        dead = next(a for a in agents if a.node.id == victim)
        await clients[0].lease_revoke(dead.lease)
        t0 = time.monotonic()
        changed = await leader.reconcile()
        reconcile_s = time.monotonic() - t0
        left = [a for a in await leader.cluster.assignments() if a.node_id == victim]
        if left:
            raise RuntimeError(f"{len(left)} replicas still on dead node {victim}")
        return {"nodes": NODES, "replicas": replicas, "services_written_first": placed,
                "join_s": round(join_s, 2), "first_placement_s": round(first_s, 3),
                "victim_replicas": load[victim], "services_moved": changed,
                "keepalives_per_s": round(keepalives, 1), "death": "lease revoked",
                "reconcile_after_death_s": round(reconcile_s, 3), "leader_cpu_pct": round(cpu_pct, 1),
                "etcd_writes_per_s": round(writes, 2)}  # fmt: skip
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()
        for p in procs:
            await p.stop()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="clusterperf-") as tmp:
        result = asyncio.run(run(Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
