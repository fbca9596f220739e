"""Which workload driver runs a service: a registry of :class:`Runtime` implementations by name.

A service's driver is named by its spec (:attr:`zlayer.spec.ServiceSpec.driver`: ``linux``, or ``wasm`` for the WASM
service types). The daemon registers what this node has (only ``linux`` today); the WASM and Docker drivers plug in
here beside it, and the agent asks the registry for a service's driver, never which kind it got.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from zlayer.errors import SpecError
from zlayer.runtime.protocol import Runtime

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec


class Drivers:
    """The node's workload drivers by name; the first one registered is the default (jobs, the containers API)."""

    def __init__(self, drivers: Mapping[str, Runtime]) -> None:
        if not drivers:
            raise ValueError("a node needs at least one workload driver")
        self._by_name = dict(drivers)

    @property
    def default(self) -> Runtime:
        return next(iter(self._by_name.values()))

    def names(self) -> list[str]:
        return list(self._by_name)

    def __iter__(self) -> Iterator[Runtime]:
        return iter(self._by_name.values())

    def check(self, name: str, spec: ServiceSpec) -> None:
        """Refuse, as a spec error at the field that chose it, a service whose driver this node does not have."""
        if spec.driver not in self._by_name:
            raise SpecError(
                f"service {name!r} needs the {spec.driver} workload driver, which this node does not have "
                f"(it has: {', '.join(self._by_name)})",
                where=f"services.{name}.service_type",
            )

    def for_service(self, spec: ServiceSpec) -> Runtime:
        """The driver that runs ``spec`` (deploys were :meth:`check`-ed, so it is there)."""
        return self._by_name[spec.driver]


__all__ = ["Drivers"]
