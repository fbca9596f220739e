"""Which workload driver runs a service: a registry of :class:`Runtime` implementations by name.

A service's driver is named by its spec (:attr:`zlayer.spec.ServiceSpec.driver`: ``linux``, or ``wasm`` for the WASM
service types), else by its image: a WASM artifact in the node's store (``image_kind``, which reads the manifest's
artifactType, config media type or layers) is run by the ``wasm`` driver with no setting, and a daemon started with
``--runtime wasm`` runs every service with it (``force``). The daemon registers what this node has (``linux`` and
``wasm``); the agent asks the registry for a service's driver, never which kind it got.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from zlayer.errors import NotFoundError, SpecError
from zlayer.runtime.protocol import ContainerId, Runtime

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec


class Drivers:
    """The node's workload drivers by name; the first one registered is the default (jobs, the containers API)."""

    def __init__(
        self,
        drivers: Mapping[str, Runtime],
        *,
        image_kind: Callable[[str], str | None] | None = None,
        force: str | None = None,
    ) -> None:
        if not drivers:
            raise ValueError("a node needs at least one workload driver")
        if force is not None and force not in drivers:
            raise ValueError(f"forced driver {force!r} is not registered")
        self._by_name = dict(drivers)
        self._image_kind = image_kind
        self._force = force

    @property
    def default(self) -> Runtime:
        return next(iter(self._by_name.values()))

    def names(self) -> list[str]:
        return list(self._by_name)

    def __iter__(self) -> Iterator[Runtime]:
        return iter(self._by_name.values())

    def name_for(self, spec: ServiceSpec) -> str:
        """The name of the driver that runs ``spec``: the forced one, the spec's WASM type, the image's kind."""
        if self._force is not None:
            return self._force
        if spec.driver == "linux" and self._image_kind is not None and "wasm" in self._by_name:
            kind = self._image_kind(spec.image.name)
            if kind is not None and kind in self._by_name:
                return kind
        return spec.driver

    def decided(self, spec: ServiceSpec) -> bool:
        """Whether :meth:`for_service` can tell without pulling: forced, a WASM type, or the image is in the store
        (or nothing would detect it). Otherwise the agent pulls first and asks again."""
        if self._force is not None or spec.driver != "linux" or self._image_kind is None or "wasm" not in self._by_name:
            return True
        return self._image_kind(spec.image.name) is not None

    def check(self, name: str, spec: ServiceSpec) -> None:
        """Refuse, as a spec error at the field that chose it, a service whose driver this node does not have."""
        if self.name_for(spec) not in self._by_name:
            raise SpecError(
                f"service {name!r} needs the {spec.driver} workload driver, which this node does not have "
                f"(it has: {', '.join(self._by_name)})",
                where=f"services.{name}.service_type",
            )

    def name_of(self, driver: Runtime) -> str:
        """The name a driver is registered under (``linux``, ``wasm``)."""
        return next((n for n, d in self._by_name.items() if d is driver), "")

    async def owner(self, cid: ContainerId) -> Runtime:
        """The driver that holds the container ``cid`` (the default when none does: its NotFoundError says so)."""
        for driver in self._by_name.values():
            try:
                await driver.state(cid)
            except NotFoundError:
                continue
            return driver
        return self.default

    def for_service(self, spec: ServiceSpec) -> Runtime:
        """The driver that runs ``spec`` (deploys were :meth:`check`-ed, so it is there)."""
        return self._by_name[self.name_for(spec)]


__all__ = ["Drivers"]
