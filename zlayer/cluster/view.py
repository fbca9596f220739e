"""The typed cluster view: the nodes as the leader knows them and where each replica is assigned.

This is what membership stores per node (as JSON: ``Node.model_dump_json`` / ``Node.model_validate_json``), what
``zlayer node status`` shows, and what placement (:mod:`zlayer.cluster.placement`) reads. Frozen pydantic models, as
the spec's are: a view is a value, never changed in place; a change is a new view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, model_validator

GpuVendor: TypeAlias = Literal["nvidia", "amd", "intel", "unknown"]
NodeMode: TypeAlias = Literal["full", "replicate"]
"""``full``: a voter when the voter rule wants one; ``replicate``: always a learner. Both run replicas."""
NodeStatus: TypeAlias = Literal["ready", "draining", "dead"]
"""Only ``ready`` nodes run replicas: a draining node's replicas move to ready ones, as a dead one's do."""
NodeRole: TypeAlias = Literal["leader", "voter", "learner"]

NODE_MODES: tuple[NodeMode, ...] = ("full", "replicate")
NODE_STATUSES: tuple[NodeStatus, ...] = ("ready", "draining", "dead")
NODE_ROLES: tuple[NodeRole, ...] = ("leader", "voter", "learner")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gpu(_Frozen):
    """One GPU of a node: its vendor (from the PCI vendor id), and where known its model and memory."""

    index: int = Field(ge=0, description="its index among the node's GPUs of its vendor (nvidia-smi's for NVIDIA)")
    vendor: GpuVendor
    model: str = ""
    memory_mb: int = Field(default=0, ge=0)
    pci_address: str = ""


class NodeResources(_Frozen):
    """What a node has to give: CPU cores, memory and disk (of the data dir's filesystem) in bytes, and GPUs."""

    cpu_cores: float = Field(default=0.0, ge=0)
    memory_bytes: int = Field(default=0, ge=0)
    disk_bytes: int = Field(default=0, ge=0)
    gpus: tuple[Gpu, ...] = ()


class Node(_Frozen):
    """A member of the cluster as the leader knows it."""

    id: str = Field(min_length=1)
    advertise_addr: str
    labels: dict[str, str] = Field(default_factory=dict)
    mode: NodeMode = "full"
    status: NodeStatus = "ready"
    role: NodeRole = "learner"
    resources: NodeResources = Field(default_factory=NodeResources)
    os: str | None = None
    arch: str | None = None

    @property
    def schedulable(self) -> bool:
        """Whether placement may put a replica here (only a ``ready`` node)."""
        return self.status == "ready"


class Assignment(_Frozen):
    """Replica ``replica`` (numbered from 1, as the agent numbers them; unique per service name in the cluster, as
    its container id ``{service}-rep-{replica}`` must be) of ``deployment``/``service`` runs on ``node_id``, with the
    node's GPUs ``gpus`` (their ``Gpu.index``, all of one vendor) when it asks for some."""

    deployment: str
    service: str
    replica: int = Field(ge=1)
    node_id: str
    gpus: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.deployment, self.service, self.replica)


class ClusterView(_Frozen):
    """The nodes and the current assignments, as one value."""

    nodes: tuple[Node, ...] = ()
    assignments: tuple[Assignment, ...] = ()

    @model_validator(mode="after")
    def _one_node_per_id(self) -> ClusterView:
        seen: set[str] = set()
        for n in self.nodes:
            if n.id in seen:
                raise ValueError(f"node {n.id!r} appears twice in the cluster view")
            seen.add(n.id)
        return self

    def node(self, node_id: str) -> Node | None:
        for n in self.nodes:
            if n.id == node_id:
                return n
        return None

    def on_node(self, node_id: str) -> list[Assignment]:
        return [a for a in self.assignments if a.node_id == node_id]

    def with_assignments(self, assignments: Iterable[Assignment]) -> ClusterView:
        return self.model_copy(update={"assignments": tuple(assignments)})


__all__ = [
    "NODE_MODES",
    "NODE_ROLES",
    "NODE_STATUSES",
    "Assignment",
    "ClusterView",
    "Gpu",
    "GpuVendor",
    "Node",
    "NodeMode",
    "NodeResources",
    "NodeRole",
    "NodeStatus",
]
