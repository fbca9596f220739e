"""What the Docker API knows beyond the node's own records: each container's Docker id, name and the config it was
created with, execs, user-made networks and volumes, and the event bus of ``GET /events``."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from zlayer.dockerapi.server import DockerError

if TYPE_CHECKING:
    from zlayer.agent.standalone import Standalone
    from zlayer.runtime.protocol import ExecSession

_ADJ = ("brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry", "noble", "proud",
        "quiet", "sharp", "swift", "vivid", "witty", "zen")  # fmt: skip
_NOUN = ("turing", "hopper", "lovelace", "ritchie", "thompson", "torvalds", "knuth", "dijkstra", "liskov", "shannon",
         "curie", "noether", "babbage", "hamilton", "kay", "lamport")  # fmt: skip


def new_id() -> str:
    return secrets.token_hex(32)


def random_name(taken: set[str]) -> str:
    while True:
        name = f"{secrets.choice(_ADJ)}_{secrets.choice(_NOUN)}"
        if name not in taken:
            return name
        name += f"{secrets.randbelow(100)}"
        if name not in taken:
            return name


@dataclass
class DockerContainer:
    id: str
    name: str
    created: str
    config: dict[str, Any]
    host_config: dict[str, Any]
    image_id: str
    sa: Standalone
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    exec_ids: list[str] = field(default_factory=list)

    def doc(self) -> dict[str, Any]:
        """What the next daemon needs to serve it again (kept with the standalone container: ``extra["docker"]``)."""
        return {"id": self.id, "name": self.name, "created": self.created, "config": self.config,
                "host_config": self.host_config, "image_id": self.image_id, "networks": self.networks}  # fmt: skip

    @classmethod
    def from_doc(cls, doc: dict[str, Any], sa: Standalone) -> DockerContainer:
        return cls(str(doc["id"]), str(doc["name"]), str(doc["created"]), dict(doc["config"]),
                   dict(doc["host_config"]), str(doc["image_id"]), sa, dict(doc.get("networks") or {}))  # fmt: skip


@dataclass
class Exec:
    id: str
    container: DockerContainer
    argv: list[str]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool
    env: list[str]
    workdir: str | None
    user: str | None
    running: bool = False
    exit_code: int | None = None
    pid: int = 0
    session: ExecSession | None = None
    size: tuple[int, int] | None = None


@dataclass
class Network:
    id: str
    name: str
    driver: str
    created: str
    labels: dict[str, str]
    options: dict[str, str]
    internal: bool = False
    attachable: bool = False


@dataclass
class Volume:
    name: str
    created: str
    labels: dict[str, str]
    driver: str = "local"


class Events:
    """``GET /events``: the node's Docker events, to every follower from when it came, and the last ones for
    ``since``."""

    def __init__(self) -> None:
        self.backlog: list[dict[str, Any]] = []
        self._waiters: set[asyncio.Queue[dict[str, Any]]] = set()

    def add(self, kind: str, action: str, actor_id: str, attrs: dict[str, str], status_from: str = "") -> None:
        t = time.time_ns()
        ev: dict[str, Any] = {"Type": kind, "Action": action, "Actor": {"ID": actor_id, "Attributes": attrs},
                              "scope": "local", "time": t // 1_000_000_000, "timeNano": t}  # fmt: skip
        if kind == "container":
            ev.update({"status": action, "id": actor_id, "from": status_from})
        self.backlog = [*self.backlog[-999:], ev]
        for q in self._waiters:
            q.put_nowait(ev)

    async def follow(self, since: float | None, until: float | None) -> AsyncIterator[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._waiters.add(q)
        try:
            if since is not None:
                for ev in self.backlog:
                    if ev["timeNano"] >= since * 1e9 and (until is None or ev["timeNano"] <= until * 1e9):
                        yield ev
            while True:
                if until is not None:
                    left = until - time.time()
                    if left <= 0:
                        return
                    try:
                        ev = await asyncio.wait_for(q.get(), left)
                    except TimeoutError:
                        return
                else:
                    ev = await q.get()
                yield ev
        finally:
            self._waiters.discard(q)


class Names:
    """Containers by id, id prefix and name, as Docker resolves them."""

    def __init__(self) -> None:
        self.by_id: dict[str, DockerContainer] = {}

    def names(self) -> set[str]:
        return {c.name for c in self.by_id.values()}

    def find(self, ref: str) -> DockerContainer:
        ref = ref.lstrip("/")
        got = self.by_id.get(ref)
        if got is not None:
            return got
        for c in self.by_id.values():
            if c.name == ref:
                return c
        if len(ref) >= 1 and all(ch in "0123456789abcdef" for ch in ref):
            hits = [c for c in self.by_id.values() if c.id.startswith(ref)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise DockerError(400, f"multiple IDs found with provided prefix: {ref}")
        raise DockerError(404, f"No such container: {ref}")


def private_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


__all__ = ["DockerContainer", "Events", "Exec", "Names", "Network", "Volume", "new_id", "random_name"]
