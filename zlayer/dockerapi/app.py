"""The Docker Engine API shim: its context and its routes, served on their own unix socket by ``zlayer serve
--docker-socket``. Containers made through it are the node's standalone containers
(:mod:`zlayer.agent.standalone`), on its runtime and network; images are its image store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zlayer._version import __version__
from zlayer.dockerapi.server import Router, Server
from zlayer.dockerapi.state import DockerContainer, Events, Names, Network, Volume
from zlayer.paths import bind_unix, write_atomic

if TYPE_CHECKING:
    from zlayer.agent.manager import ServiceManager
    from zlayer.agent.standalone import Standalone
    from zlayer.images import ImageStore
    from zlayer.runtime.protocol import Runtime
    from zlayer.state import Store

DEPLOYMENT = "docker"  # the deployment column of containers made through the Docker API (`zlayer ps -c`)
DEFAULT_SOCKET = "/var/run/docker.sock"
log = logging.getLogger("zlayer.dockerapi")


@dataclass
class DockerApi:
    manager: ServiceManager
    runtime: Runtime
    store: Store
    images: ImageStore | None
    data_dir: Path
    names: Names = field(default_factory=Names)
    events: Events = field(default_factory=Events)
    execs: dict[str, Any] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    volumes: dict[str, Volume] = field(default_factory=dict)
    builds: Any = None  # zlayer.builder.service.BuildService, made at the first `docker build`
    started: float = 0.0

    @property
    def standalone(self) -> Any:
        return self.manager.standalone

    @property
    def _objects_file(self) -> Path:
        return self.data_dir / "dockerapi.json"

    def adopt(self) -> None:
        """After the agent took its standalone containers back: the Docker containers among them, and the
        networks and volumes made through this API (``DATA/dockerapi.json``), served again as before the restart."""
        for sa in self.standalone.by_id.values():
            doc = sa.extra.get("docker")
            if isinstance(doc, dict) and sa.record.deployment == "docker":
                try:
                    c = DockerContainer.from_doc(doc, sa)
                except (KeyError, TypeError, ValueError) as e:
                    log.warning("docker container %s not served again: %s", sa.id, e)
                    continue
                self.names.by_id[c.id] = c
        try:
            kept = json.loads(self._objects_file.read_text())
            for n in kept.get("networks", []):
                self.networks.setdefault(n["name"], Network(**n))
            for v in kept.get("volumes", []):
                self.volumes.setdefault(v["name"], Volume(**v))
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            log.warning("%s: not read (%s): the networks and volumes made through the Docker API are forgotten",
                        self._objects_file, e)  # fmt: skip

    def save_objects(self) -> None:
        """Keep the networks and volumes made through this API for the next daemon."""
        from dataclasses import asdict

        from zlayer.dockerapi.system import BUILTIN_NETWORKS

        doc = {"networks": [asdict(n) for n in self.networks.values() if n.name not in BUILTIN_NETWORKS],
               "volumes": [asdict(v) for v in self.volumes.values()]}  # fmt: skip
        try:
            write_atomic(self._objects_file, json.dumps(doc), durable=False)
        except OSError as e:
            log.warning("cannot keep %s: %s", self._objects_file, e)

    async def keep(self, c: DockerContainer) -> None:
        """Keep a Docker container's changed name or networks for the next daemon."""
        c.sa.extra["docker"] = c.doc()
        await self.standalone.save(c.sa)

    def on_change(self, sa: Standalone, action: str) -> None:
        """The agent's standalone containers changed: a Docker event for the ones made here."""
        for c in self.names.by_id.values():
            if c.sa is sa:
                attrs = {"name": c.name, "image": str(c.config.get("Image", "")), **(c.config.get("Labels") or {})}
                if action == "die":
                    attrs["exitCode"] = str(sa.record.exit_code if sa.record.exit_code is not None else -1)
                self.events.add("container", action, c.id, attrs, str(c.config.get("Image", "")))
                if action == "destroy":
                    self.names.by_id.pop(c.id, None)
                return


def make_router(api: DockerApi) -> Router:
    from zlayer.dockerapi import build, containers, images, system

    router = Router()
    system.register(router, api)
    build.register(router, api)
    containers.register(router, api)
    images.register(router, api)
    return router


class DockerSocket:
    """The shim's listener: a root-only unix socket (0660 root:root, as dockerd's without a docker group)."""

    def __init__(self, api: DockerApi, path: Path) -> None:
        self.api = api
        self.path = path
        self.server = Server(make_router(api), f"zlayer/{__version__}")
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Bind the socket (refused when something answers there already); requests are served from :meth:`serve`."""
        from zlayer.config import probe_socket
        from zlayer.errors import DaemonError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        if probe_socket(self.path):
            raise DaemonError(f"something already answers on {self.path} (a dockerd?)", where="--docker-socket-path",
                              hint="stop it, or pass --docker-socket-path for another socket")  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = bind_unix(self.path, 0o660)
        with contextlib.suppress(OSError):
            os.chown(self.path, 0, 0)
        sock.listen(1024)
        sock.setblocking(False)
        self._sock = sock
        self.api.manager.standalone.on_change.append(self.api.on_change)
        self.api.started = asyncio.get_running_loop().time()

    async def serve(self) -> None:
        """Answer on the socket :meth:`start` bound, once the agent has taken its containers back: a client that
        connects before (``docker ps`` just after a restart) waits in the backlog rather than seeing none."""
        assert self._sock is not None, "start() binds the socket first"
        self.api.adopt()
        await self.server.start(self._sock)

    async def close(self) -> None:
        await self.server.close()
        if self.api.builds is not None:
            await self.api.builds.close()  # a build in flight is cancelled: nothing stays mounted or half-written
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


__all__ = ["DEFAULT_SOCKET", "DEPLOYMENT", "DockerApi", "DockerSocket", "make_router"]
