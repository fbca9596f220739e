"""Placement puts replicas where a user would expect them, and says why when it cannot.

The examples check each rule as a user meets it (spread, bin-packing, node modes, selectors, GPUs, dead and
draining nodes, minimal movement, the unschedulable reason); the properties check on random clusters that no node
is ever committed past its CPU, memory or GPUs, no constraint is broken, and placing again changes nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zlayer.cluster import placement
from zlayer.cluster.placement import GPU_SHARERS, Placement, place
from zlayer.cluster.view import Assignment, ClusterView, Gpu, Node, NodeResources
from zlayer.spec.models import DeploymentSpec

GI = 1 << 30


def node(
    nid: str,
    cpu: float = 4,
    mem: int = 8 * GI,
    status: str = "ready",
    gpus: tuple[Gpu, ...] = (),
    **labels: str,
) -> Node:
    return Node(
        id=nid,
        advertise_addr=f"10.0.0.{len(nid)}",
        labels=labels,
        status=status,  # type: ignore[arg-type]
        resources=NodeResources(cpu_cores=cpu, memory_bytes=mem, disk_bytes=100 * GI, gpus=gpus),
    )


def svc(replicas: int = 1, cpu: float | None = None, memory: str | None = None, **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if cpu is not None:
        res["cpu"] = cpu
    if memory is not None:
        res["memory"] = memory
    if "gpu" in extra:
        res["gpu"] = extra.pop("gpu")
    return {"image": {"name": "busybox"}, "resources": res, "scale": {"mode": "fixed", "replicas": replicas}, **extra}


def deployment(name: str = "demo", **services: dict[str, Any]) -> dict[str, DeploymentSpec]:
    return {name: DeploymentSpec.model_validate({"version": "v1", "deployment": name, "services": services})}


def where(p: Placement, service: str, deployment: str = "demo") -> Counter[str]:
    return Counter(a.node_id for a in p.of(deployment, service))


def test_replicas_spread_over_nodes() -> None:
    view = ClusterView(nodes=(node("a"), node("b"), node("c")))
    p = place(view, deployment(web=svc(6, cpu=0.5)))
    assert where(p, "web") == {"a": 2, "b": 2, "c": 2}
    assert [a.replica for a in p.of("demo", "web")] == [1, 2, 3, 4, 5, 6]
    assert not p.unschedulable


def test_same_named_services_of_two_deployments_never_share_a_replica_number() -> None:
    # a replica's id is `{service}-rep-{n}` whatever its deployment: two `web`s must not both run web-rep-1
    view = ClusterView(nodes=(node("a"), node("b"), node("c")))
    specs = {**deployment("shop", web=svc(3)), **deployment("blog", web=svc(3))}
    p = place(view, specs)
    blog, shop = ([a.replica for a in p.of(d, "web")] for d in ("blog", "shop"))
    assert (blog, shop) == ([1, 2, 3], [4, 5, 6])
    assert place(view.with_assignments(p.assignments), specs) == p
    # a scale-up takes numbers neither holds; a scale-down drops the service's highest, whatever they are
    up = place(view.with_assignments(p.assignments), specs, {("blog", "web"): 5})
    assert [a.replica for a in up.of("blog", "web")] == [1, 2, 3, 7, 8]
    down = place(view.with_assignments(up.assignments), specs, {("blog", "web"): 2, ("shop", "web"): 1})
    assert [a.replica for a in down.of("blog", "web")] == [1, 2] and [a.replica for a in down.of("shop", "web")] == [4]
    # numbers a removed deployment held are free again
    assert [a.replica for a in place(view.with_assignments(p.assignments), deployment("shop", web=svc(3))).of(
        "shop", "web")] == [4, 5, 6]  # fmt: skip
    assert [a.replica for a in place(view, deployment("shop", web=svc(3))).of("shop", "web")] == [1, 2, 3]
    # a clash placed before this rule: the deployment first by name keeps the number, the other's replica moves to
    # a free one (the rest stay where they run)
    clash = tuple(
        Assignment(deployment=d, service="web", replica=i, node_id=n)
        for d in ("blog", "shop")
        for i, n in ((1, "a"), (2, "b"), (3, "c"))
    )
    healed = place(view.with_assignments(clash), specs)
    assert {a.replica: a.node_id for a in healed.of("blog", "web")} == {1: "a", 2: "b", 3: "c"}
    assert [a.replica for a in healed.of("shop", "web")] == [4, 5, 6]
    assert place(view.with_assignments(healed.assignments), specs) == healed


def test_shared_bin_packs_by_requested_cpu_and_memory_and_never_overcommits() -> None:
    view = ClusterView(
        nodes=(node("a", cpu=4), node("b", cpu=4)),
        assignments=(Assignment(deployment="demo", service="big", replica=1, node_id="a"),),
    )
    specs = deployment(big=svc(1, cpu=3), wide=svc(1, cpu=2))
    p = place(view, specs)
    assert where(p, "big") == {"a": 1}
    assert where(p, "wide") == {"b": 1}  # 2 cores do not fit beside big on a (1 left): b
    # a new replica goes to the least loaded node that fits (b: 2 of 4 cores asked for, a: 3 of 4) ...
    view = view.with_assignments(p.assignments)
    assert where(place(view, deployment(**specs["demo"].services, small=svc(1, cpu=1))), "small") == {"b": 1}
    # ... and with affinity pack to the fullest that still fits (best fit): a, whose last core it takes
    packed = place(
        view, deployment(**specs["demo"].services, small=svc(1, cpu=1, affinity="pack"), more=svc(1, cpu=0.5))
    )
    assert where(packed, "small") == {"a": 1} and where(packed, "more") == {"b": 1}
    # memory counts as CPU does; the reason names the request as written (db runs already: what fits is placed)
    running = (Assignment(deployment="demo", service="db", replica=1, node_id="a"),)
    p = place(
        ClusterView(nodes=(node("a", mem=GI), node("b", mem=GI)), assignments=running),
        deployment(db=svc(3, memory="768Mi")),
    )
    assert where(p, "db") == {"a": 1, "b": 1}
    (u,) = p.unschedulable
    assert str(u) == (
        "unschedulable: 1 of 3 replicas of db fit no node; of 2 nodes: 2 have too little free memory (wants 768Mi)"
    )


def test_dedicated_puts_one_replica_per_node() -> None:
    view = ClusterView(
        nodes=(node("a"), node("b")),
        assignments=(Assignment(deployment="demo", service="web", replica=1, node_id="a"),),
    )
    p = place(view, deployment(db=svc(3, node_mode="dedicated"), web=svc(2)))
    assert where(p, "db") == {"a": 1, "b": 1}
    assert where(p, "web") == {"a": 1, "b": 1}  # others still share those nodes
    (u,) = p.unschedulable
    assert (u.service, u.missing, u.desired) == ("db", 1, 3)
    assert (
        u.reason == "1 of 3 replicas of db fit no node; of 2 nodes: 2 already run a replica of db (node_mode dedicated)"
    )


def test_exclusive_gets_a_node_of_its_own() -> None:
    view = ClusterView(
        nodes=(node("a"), node("b"), node("c")),
        assignments=(Assignment(deployment="demo", service="web", replica=1, node_id="a"),),
    )
    p = place(view, deployment(web=svc(4), ml=svc(2, node_mode="exclusive")))
    ml = where(p, "ml")
    assert ml == {"b": 1, "c": 1}  # not beside web's replica on a, nor beside each other
    assert where(p, "web") == {"a": 4}  # and nothing joins them
    p = place(view, deployment(web=svc(1), ml=svc(3, node_mode="exclusive")))
    (u,) = p.unschedulable
    assert u.reason == (
        "1 of 3 replicas of ml fit no node; of 3 nodes: 2 run an exclusive replica, "
        "1 already run replicas (node_mode exclusive wants an empty node)"
    )


def test_node_selector_required_and_preferred_labels() -> None:
    nodes = (node("a", zone="eu"), node("b", zone="eu", disk="ssd"), node("c", zone="us", disk="ssd"))
    p = place(
        ClusterView(nodes=nodes),
        deployment(
            db=svc(1, node_selector={"labels": {"zone": "eu"}, "prefer_labels": {"disk": "ssd"}}),
            web=svc(4, node_selector={"labels": {"zone": "eu"}}),
        )
        | deployment("other", gpu=svc(1, node_selector={"labels": {"zone": "ap"}})),
    )
    assert where(p, "db") == {"b": 1}
    assert where(p, "web") == {"a": 2, "b": 2}
    (u,) = p.unschedulable
    assert u.reason == (
        "1 of 1 replicas of gpu fit no node; of 3 nodes: 3 lack labels zone=ap "
        "(deployment other starts whole or not at all)"
    )


def test_gpus_by_count_vendor_model_and_sharing() -> None:
    a100 = tuple(Gpu(index=i, vendor="nvidia", model="NVIDIA A100-SXM4-80GB", memory_mb=81920) for i in range(2))
    mi = (Gpu(index=0, vendor="amd", model="AMD Instinct MI250X"),)
    view = ClusterView(nodes=(node("cpu"), node("g1", gpus=a100), node("g2", gpus=mi)))
    p = place(
        view,
        deployment(
            train=svc(1, gpu={"count": 2, "model": "a100"}),
            infer=svc(1, gpu={"vendor": "amd"}),
            web=svc(1),
        ),
    )
    (train,) = p.of("demo", "train")
    assert (train.node_id, train.gpus) == ("g1", (0, 1))
    (infer,) = p.of("demo", "infer")
    assert (infer.node_id, infer.gpus) == ("g2", (0,))
    # a third A100 job finds both taken; the reason counts why each node was ruled out
    p = place(
        view.with_assignments(p.assignments),
        deployment(train=svc(1, gpu={"count": 2, "model": "a100"}), more=svc(1, gpu={"count": 1, "model": "A100"})),
    )
    (u,) = p.unschedulable
    assert u.reason == (
        "1 of 1 replicas of more fit no node; of 3 nodes: 2 have no nvidia GPU model 'a100', 1 have no free nvidia GPU"
    )
    # mps: up to 8 replicas on one GPU
    one = (Gpu(index=0, vendor="nvidia", model="NVIDIA L4"),)
    p = place(
        ClusterView(nodes=(node("g", cpu=0, mem=0, gpus=one),)),
        deployment(s=svc(9, gpu={"sharing": "mps"})),
        started={"demo"},
    )
    assert len(p.of("demo", "s")) == GPU_SHARERS["mps"] == 8
    assert {a.gpus for a in p.of("demo", "s")} == {(0,)}


def test_gang_places_all_or_none() -> None:
    gpus = tuple(Gpu(index=i, vendor="nvidia", model="NVIDIA H100") for i in range(2))
    view = ClusterView(nodes=(node("g1", gpus=gpus),))
    running = (Assignment(deployment="demo", service="solo", replica=1, node_id="g1", gpus=(0,)),)
    specs = deployment(dist=svc(3, gpu={"count": 1, "scheduling": "gang"}), solo=svc(2, gpu={"count": 1}))
    p = place(view.with_assignments(running), specs)
    assert p.of("demo", "dist") == []
    assert len(p.of("demo", "solo")) == 2  # the GPU gang scheduling gave back goes to others
    u = p.reason("demo", "dist")
    assert u is not None and u.missing == 3 and "gpu scheduling gang: none of them was placed" in u.reason


def test_dead_and_draining_nodes_lose_their_replicas_to_ready_ones() -> None:
    old = tuple(
        Assignment(deployment="demo", service="web", replica=i, node_id=n) for i, n in ((1, "a"), (2, "b"), (3, "c"))
    )
    view = ClusterView(
        nodes=(node("a"), node("b", status="draining"), node("c", status="dead"), node("d")), assignments=old
    )
    p = place(view, deployment(web=svc(4)))
    got = {a.replica: a.node_id for a in p.of("demo", "web")}
    assert got[1] == "a"  # kept where it runs
    assert sorted(got.values()) == ["a", "a", "d", "d"]  # b drains and c is dead: theirs go to the ready nodes
    assert place(view.with_assignments(p.assignments), deployment(web=svc(4))).assignments == p.assignments
    p = place(view, deployment(web=svc(4, node_selector={"labels": {"zone": "x"}})))
    assert p.of("demo", "web") == []
    u = p.reason("demo", "web")
    assert (
        u is not None
        and u.reason == "4 of 4 replicas of web fit no node; of 4 nodes: 2 lack labels zone=x, 1 dead, 1 draining"
    )


def test_existing_assignments_stay_and_scale_changes_move_nothing_else() -> None:
    view = ClusterView(
        nodes=(node("a"), node("b"), node("c")),
        assignments=tuple(Assignment(deployment="demo", service="web", replica=i, node_id="a") for i in (1, 2, 3)),
    )
    specs = deployment(web=svc(3))
    assert place(view, specs).assignments == view.assignments  # all on a, though spreading would not: no movement
    up = place(view, specs, {("demo", "web"): 5})
    assert up.assignments[:3] == view.assignments and where(up, "web") == {"a": 3, "b": 1, "c": 1}
    down = place(view, specs, {("demo", "web"): 1})
    assert down.assignments == view.assignments[:1]  # the highest numbers go, as the agent scales down
    # a deployment that is gone loses its assignments; a spec whose selector the node no longer meets moves
    assert place(view, {}).assignments == ()
    p = place(
        ClusterView(nodes=(node("a"), node("b", role="x")), assignments=view.assignments),
        deployment(web=svc(3, node_selector={"labels": {"role": "x"}})),
    )
    assert where(p, "web") == {"b": 3}


def test_platform_pin_and_jobs() -> None:
    nodes = (
        Node(id="arm", advertise_addr="x", os="linux", arch="arm64"),
        Node(id="x86", advertise_addr="y", os="linux", arch="amd64"),
        Node(id="unknown", advertise_addr="z"),
    )
    p = place(
        ClusterView(nodes=nodes),
        deployment(
            a=svc(2, platform={"os": "linux", "arch": "arm64"}),
            b=svc(1, affinity={"pin": "id=x86"}),
            job={"rtype": "job", "image": {"name": "busybox"}},
        ),
    )
    assert where(p, "a") == {"arm": 1, "unknown": 1}  # a node that does not say its platform may run anything
    assert where(p, "b") == {"x86": 1}
    assert p.of("demo", "job") == []


def test_same_answer_whatever_the_order_of_nodes() -> None:
    nodes = [node(f"n{i}", cpu=2 + i % 3, zone="eu" if i % 2 else "us") for i in range(12)]
    specs = deployment(
        web=svc(10, cpu=0.5),
        db=svc(3, node_mode="dedicated", node_selector={"labels": {"zone": "eu"}}),
        x=svc(2, node_mode="exclusive"),
    )
    first = place(ClusterView(nodes=tuple(nodes)), specs)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(nodes)
        assert place(ClusterView(nodes=tuple(nodes)), specs) == first


# --- properties on random clusters -------------------------------------------------------------------------------

MODES = ("shared", "shared", "dedicated", "exclusive")


@st.composite
def scenario(draw: st.DrawFn) -> tuple[ClusterView, dict[str, DeploymentSpec], dict[tuple[str, str], int]]:
    n = draw(st.integers(0, 8))
    nodes = []
    for i in range(n):
        gpus = tuple(
            Gpu(index=j, vendor=draw(st.sampled_from(["nvidia", "amd"])), model="M")
            for j in range(draw(st.integers(0, 3)))
        )
        labels = {k: draw(st.sampled_from(["x", "y"])) for k in draw(st.sets(st.sampled_from(["zone", "disk"])))}
        nodes.append(
            Node(
                id=f"n{i}",
                advertise_addr="a",
                labels=labels,
                status=draw(st.sampled_from(["ready", "ready", "ready", "draining", "dead"])),
                resources=NodeResources(
                    cpu_cores=draw(st.sampled_from([0, 1, 2, 4])),
                    memory_bytes=draw(st.sampled_from([0, GI, 4 * GI])),
                    gpus=gpus,
                ),
            )
        )
    services: dict[str, Any] = {}
    for s in range(draw(st.integers(1, 5))):
        extra: dict[str, Any] = {"node_mode": draw(st.sampled_from(MODES))}
        if draw(st.booleans()):
            extra["node_selector"] = {
                "labels": {k: "x" for k in draw(st.sets(st.sampled_from(["zone", "disk"]), max_size=1))},
                "prefer_labels": {k: "y" for k in draw(st.sets(st.sampled_from(["zone", "disk"]), max_size=1))},
            }
        if draw(st.integers(0, 3)) == 0:
            extra["gpu"] = {
                "count": draw(st.integers(1, 2)),
                "vendor": draw(st.sampled_from(["nvidia", "amd"])),
                "sharing": draw(st.sampled_from(["exclusive", "mps", "time-slice"])),
                "scheduling": draw(st.sampled_from(["best-effort", "gang", "spread"])),
            }
        if draw(st.booleans()):
            extra["affinity"] = "pack"
        services[f"s{s}"] = svc(
            draw(st.integers(0, 6)),
            cpu=draw(st.sampled_from([None, 0.25, 1.0, 1.5])),
            memory=draw(st.sampled_from([None, "256Mi", "1Gi"])),
            **extra,
        )
    specs = deployment(**services)
    desired = {("demo", s): draw(st.integers(0, 8)) for s in services if draw(st.booleans())}
    # what runs now: a placement of the same services on the same nodes before some of them changed status
    before = ClusterView(nodes=tuple(nd.model_copy(update={"status": "ready"}) for nd in nodes))
    old = place(before, specs).assignments if draw(st.booleans()) else ()
    return ClusterView(nodes=tuple(nodes), assignments=old), specs, desired


def check_invariants(
    view: ClusterView, specs: dict[str, DeploymentSpec], desired: dict[tuple[str, str], int], p: Placement
) -> None:
    nodes = {n.id: n for n in view.nodes}
    old = {a.key: a.node_id for a in view.assignments}
    cpu: Counter[str] = Counter()
    mem: Counter[str] = Counter()
    gpu_users: Counter[tuple[str, str, int]] = Counter()
    per_node: dict[str, list[tuple[str, int]]] = {}
    for a in p.assignments:
        spec = specs[a.deployment].services[a.service]
        n = nodes[a.node_id]
        assert n.status == "ready", f"a {n.status} node runs a replica"
        sel = spec.node_selector
        if sel is not None:
            assert all(n.labels.get(k) == v for k, v in sel.labels.items()), "selector broken"
        cpu[n.id] += round((spec.resources.cpu or 0) * 1000)
        mem[n.id] += spec.resources.memory_bytes() or 0
        per_node.setdefault(n.id, []).append((a.service, a.replica))
        g = spec.resources.gpu
        assert len(a.gpus) == (g.count if g else 0) == len(set(a.gpus))
        for i in a.gpus:
            (hw,) = [x for x in n.resources.gpus if x.index == i and x.vendor == g.vendor]  # type: ignore[union-attr]
            gpu_users[(n.id, hw.vendor, i)] += 1
            assert gpu_users[(n.id, hw.vendor, i)] <= GPU_SHARERS[g.sharing or "exclusive"]  # type: ignore[union-attr]
    for nid, held in per_node.items():
        r = nodes[nid].resources
        assert not r.cpu_cores or cpu[nid] <= round(r.cpu_cores * 1000), f"{nid} over-committed in CPU"
        assert not r.memory_bytes or mem[nid] <= r.memory_bytes, f"{nid} over-committed in memory"
        services = Counter(s for s, _ in held)
        for s, count in services.items():
            mode = specs["demo"].services[s].node_mode
            if mode == "dedicated":
                assert count == 1
            if mode == "exclusive":
                assert len(held) == 1, f"exclusive {s} shares {nid}"
    for name, spec in specs["demo"].services.items():
        want = desired.get(("demo", name), spec.initial_replicas)
        got = [a.replica for a in p.of("demo", name)]
        u = p.reason("demo", name)
        assert sorted(got) == got and len(set(got)) == len(got) and all(1 <= r <= want for r in got)
        assert len(got) + (u.missing if u else 0) == want
        if spec.resources.gpu and spec.resources.gpu.scheduling == "gang" and u:
            assert all(("demo", name, a.replica) in old for a in p.of("demo", name)), "gang placed some, not all"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_properties(case: tuple[ClusterView, dict[str, DeploymentSpec], dict[tuple[str, str], int]]) -> None:
    view, specs, desired = case
    started = {a.deployment for a in view.assignments}  # what the store would say has run
    p = place(view, specs, desired, started)
    check_invariants(view, specs, desired, p)
    # idempotent: placing again what it answered changes nothing
    again = place(view.with_assignments(p.assignments), specs, desired, started)
    assert again == p
    # minimal movement: what ran on a ready node (all of them met their service before) stays there, unless the
    # wanted count dropped below its number
    now = {a.key: a for a in p.assignments}
    status = {n.id: n.status for n in view.nodes}
    for a in view.assignments:
        want = desired.get((a.deployment, a.service), specs["demo"].services[a.service].initial_replicas)
        if status[a.node_id] == "ready" and a.replica <= want:
            assert now[a.key] == a, f"{a.key} moved from {a.node_id}"
    # deterministic whatever the order of nodes
    assert place(view.model_copy(update={"nodes": tuple(reversed(view.nodes))}), specs, desired, started) == p
    # the shared heaps pick what ranking every candidate picks
    with mock.patch.object(placement, "FAST_SCAN", -1):
        assert place(view, specs, desired, started) == p
    # a deployment that never ran starts whole or not at all
    if not started and p.unschedulable:
        assert p.assignments == ()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10), st.integers(0, 40))
def test_spread_is_even_when_nothing_else_decides(n: int, replicas: int) -> None:
    view = ClusterView(nodes=tuple(node(f"n{i:02}") for i in range(n)))
    counts = where(place(view, deployment(web=svc(replicas))), "web")
    per_node = [counts.get(f"n{i:02}", 0) for i in range(n)]
    assert sum(per_node) == replicas and max(per_node) - min(per_node) <= 1


def test_a_new_deployment_starts_whole_or_not_at_all() -> None:
    view = ClusterView(nodes=(node("a"), node("b")))
    ssd_only = {"labels": {"disk": "ssd"}}
    specs = deployment("shop", web=svc(2), db=svc(1, node_mode="dedicated", node_selector=ssd_only)) | deployment(
        "blog", web=svc(3)
    )
    p = place(view, specs)
    assert p.of("shop", "web") == [] and p.of("shop", "db") == []  # nothing of shop starts half-way
    assert len(p.of("blog", "web")) == 3  # what fits starts
    assert [str(u) for u in p.unschedulable] == [
        "unschedulable: 1 of 1 replicas of db fit no node; of 2 nodes: 2 lack labels disk=ssd "
        "(deployment shop starts whole or not at all)",
        "unschedulable: 2 of 2 replicas of web wait for db: deployment shop starts whole or not at all",
    ]
    # a node with the label: shop starts, all of it
    p = place(ClusterView(nodes=(*view.nodes, node("c", disk="ssd")), assignments=p.assignments), specs)
    assert where(p, "db", "shop") == {"c": 1} and len(p.of("shop", "web")) == 2 and not p.unschedulable
    # once it runs, a scale-up places what fits and says why the rest waits; so does a restart after its nodes died
    ssd = ClusterView(nodes=(*view.nodes, node("c", disk="ssd")), assignments=p.assignments)
    up = place(ssd, specs, {("shop", "db"): 2})
    assert where(up, "db", "shop") == {"c": 1}
    assert up.reason("shop", "db") is not None and up.reason("shop", "web") is None
    gone = ClusterView(nodes=(node("a"), node("b", status="dead"), node("c", status="dead", disk="ssd")))
    back = place(gone, specs, started={"shop", "blog"})
    assert len(back.of("shop", "web")) == 2 and back.of("shop", "db") == []
