"""The cluster view is a value membership can store and read back whole, and it refuses what no node can be."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from zlayer.cluster.view import Assignment, ClusterView, Gpu, Node, NodeResources


def _node() -> Node:
    return Node(
        id="n1",
        advertise_addr="10.0.0.1",
        labels={"zone": "a"},
        mode="replicate",
        status="draining",
        role="voter",
        resources=NodeResources(
            cpu_cores=8,
            memory_bytes=16 << 30,
            disk_bytes=100 << 30,
            gpus=(Gpu(index=0, vendor="nvidia", model="NVIDIA A100-SXM4-80GB", memory_mb=81920),),
        ),
    )


def test_node_round_trips_through_json() -> None:
    n = _node()
    assert Node.model_validate_json(n.model_dump_json()) == n
    view = ClusterView(nodes=(n,), assignments=(Assignment(deployment="d", service="web", replica=1, node_id="n1"),))
    back = ClusterView.model_validate_json(view.model_dump_json())
    assert back == view
    assert back.node("n1") == n and back.node("n2") is None
    assert [a.key for a in back.on_node("n1")] == [("d", "web", 1)]
    assert not n.schedulable


def test_view_is_frozen_and_strict() -> None:
    n = _node()
    with pytest.raises(ValidationError):
        n.status = "ready"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="status"):
        Node(id="n", advertise_addr="x", status="gone")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="mode"):
        Node(id="n", advertise_addr="x", mode="shared")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="vendor"):
        Gpu(index=0, vendor="matrox")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="replica"):
        Assignment(deployment="d", service="s", replica=0, node_id="n")
    with pytest.raises(ValidationError, match="memory_bytes"):
        NodeResources(memory_bytes=-1)


def test_a_node_id_appears_once() -> None:
    with pytest.raises(ValidationError, match="node 'n1' appears twice"):
        ClusterView(nodes=(_node(), _node()))
