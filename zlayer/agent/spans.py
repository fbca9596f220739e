"""The agent's trace spans: a deploy, and within it each service's image pull and each replica's create, start and
wait for health, with ZLayer's attributes (``container.id``, ``container.name``, ``container.image.name``,
``container.runtime``). No-ops unless the daemon exports traces (``observability.tracing``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import trace

if TYPE_CHECKING:
    from zlayer.agent.replica import Replica

tracer = trace.get_tracer("zlayer.agent")


def replica_attributes(rep: Replica) -> dict[str, Any]:
    return {
        "container.id": rep.record.id,
        "container.name": str(rep.cid),
        "container.image.name": rep.spec.image.name,
        "container.runtime": rep.spec.driver,
        "zlayer.deployment": rep.deployment,
        "zlayer.service": rep.service,
    }
