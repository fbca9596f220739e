"""Docker's system routes (``_ping``, ``version``, ``info``, ``system/df``, ``events``) and its networks and volumes.

Networks: every container of the node is on the node's bridge (zlayer's network, with its isolation and DNS), so
a network made here is a name containers are attached to (Compose's ``PROJECT_default``), not a second bridge.
Volumes are the node's named volumes (the runtime makes one on first use).
"""

from __future__ import annotations

import asyncio
import os
import platform
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from zlayer._version import __version__
from zlayer.dockerapi.server import (
    API_VERSION,
    MIN_API_VERSION,
    DockerError,
    Request,
    Response,
    Router,
    json_lines,
    json_response,
    no_content,
)
from zlayer.dockerapi.state import Network, Volume, new_id

if TYPE_CHECKING:
    from zlayer.dockerapi.app import DockerApi

BUILTIN_NETWORKS = ("bridge", "host", "none")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def register(router: Router, api: DockerApi) -> None:
    @router.route("GET", "/_ping")
    async def ping(req: Request) -> Response:
        return Response(200, b"OK", content_type="text/plain; charset=utf-8",
                        headers=[("Builder-Version", "1"), ("Cache-Control", "no-cache, no-store, must-revalidate"),
                                 ("Pragma", "no-cache")])  # fmt: skip

    def version_doc() -> dict[str, Any]:
        return {"Platform": {"Name": "zlayer"}, "Components": [{"Name": "Engine", "Version": __version__,
                "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux",
                            "Arch": "amd64"}}],
                "Version": __version__, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
                "GitCommit": "", "GoVersion": "", "Os": "linux", "Arch": _arch(), "KernelVersion": platform.release(),
                "BuildTime": ""}  # fmt: skip

    @router.route("GET", "/version")
    async def version(req: Request) -> Response:
        return json_response(version_doc())

    @router.route("GET", "/info")
    async def info(req: Request) -> Response:
        from zlayer.dockerapi.containers import docker_state

        states = [docker_state(c) for c in api.names.by_id.values()]
        images = await asyncio.to_thread(api.images.list) if api.images is not None else []
        return json_response({
            "ID": "zlayer", "Containers": len(states), "ContainersRunning": states.count("running"),
            "ContainersPaused": states.count("paused"), "ContainersStopped": states.count("exited"),
            "Images": len({i.id for i in images}), "Driver": "overlay2", "DriverStatus": [],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"], "Log": ["json-file"]},
            "MemoryLimit": True, "SwapLimit": True, "CpuCfsPeriod": True, "CpuCfsQuota": True, "CPUShares": True,
            "CPUSet": True, "PidsLimit": True, "OomKillDisable": False, "IPv4Forwarding": True, "Debug": False,
            "NFd": len(os.listdir("/proc/self/fd")), "NGoroutines": len(asyncio.all_tasks()), "SystemTime": _now(),
            "LoggingDriver": "json-file", "CgroupDriver": "cgroupfs", "CgroupVersion": "2", "NEventsListener": 0,
            "KernelVersion": platform.release(), "OperatingSystem": "zlayer", "OSVersion": "", "OSType": "linux",
            "Architecture": platform.machine(), "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {}, "Mirrors": []},
            "NCPU": os.cpu_count() or 1, "MemTotal": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "DockerRootDir": str(api.data_dir), "Name": platform.node(), "Labels": [], "ExperimentalBuild": False,
            "ServerVersion": __version__, "Runtimes": {"zlayer": {"path": "zlayer-shim"}}, "DefaultRuntime": "zlayer",
            "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": False,
                      "Error": "", "RemoteManagers": None},
            "LiveRestoreEnabled": False, "Isolation": "", "InitBinary": "",
            "SecurityOptions": ["name=seccomp,profile=default"],
            "Warnings": None,
        })  # fmt: skip

    @router.route("GET", "/system/df")
    async def system_df(req: Request) -> Response:
        from zlayer.dockerapi.containers import Containers
        from zlayer.dockerapi.images import summary

        cs = Containers(api)
        groups: dict[str, list[Any]] = {}
        if api.images is not None:
            for img in await asyncio.to_thread(api.images.list):
                groups.setdefault(img.id, []).append(img)
        used: dict[str, int] = {}
        for c in api.names.by_id.values():
            used[c.image_id] = used.get(c.image_id, 0) + 1
        images = [summary(g, used.get(i, 0)) for i, g in groups.items()]
        return json_response({
            "LayersSize": sum(i["Size"] for i in images), "Images": images,
            "Containers": [{**cs.summary(c), "SizeRw": 0, "SizeRootFs": 0} for c in api.names.by_id.values()],
            "Volumes": [volume_doc(v) | {"UsageData": {"Size": -1, "RefCount": 0}} for v in api.volumes.values()],
            "BuildCache": [],
        })  # fmt: skip

    @router.route("GET", "/events")
    async def events(req: Request) -> Response:
        filters = req.filters()
        since = float(req.q("since")) if req.q("since") else None
        until = float(req.q("until")) if req.q("until") else None

        def wanted(ev: dict[str, Any]) -> bool:
            for key, values in filters.items():
                if key == "type" and ev["Type"] not in values:
                    return False
                if key in ("event", "action") and ev["Action"] not in values:
                    return False
                if key == "container" and not any(
                    ev["Actor"]["ID"].startswith(v) or ev["Actor"]["Attributes"].get("name") == v for v in values
                ):
                    return False
                if key == "label":
                    attrs = ev["Actor"]["Attributes"]
                    for v in values:
                        k, eq, want = v.partition("=")
                        if k not in attrs or (eq and attrs[k] != want):
                            return False
            return True

        async def stream() -> Any:
            async for ev in api.events.follow(since, until):
                if wanted(ev):
                    yield ev

        return Response(200, stream=json_lines(_until_closed(stream())))

    # ------------------------------------------------------------------------------------------- networks

    def net_doc(n: Network) -> dict[str, Any]:
        members = {c.id: {"Name": c.name, "EndpointID": c.id[:32], "MacAddress": "",
                          "IPv4Address": f"{c.sa.record.ip}/24" if c.sa.record.ip else "", "IPv6Address": ""}
                   for c in api.names.by_id.values() if n.name in c.networks}  # fmt: skip
        return {"Name": n.name, "Id": n.id, "Created": n.created, "Scope": "local", "Driver": n.driver,
                "EnableIPv6": False, "IPAM": {"Driver": "default", "Options": None, "Config": []},
                "Internal": n.internal, "Attachable": n.attachable, "Ingress": False, "ConfigFrom": {"Network": ""},
                "ConfigOnly": False, "Containers": members, "Options": n.options, "Labels": n.labels}  # fmt: skip

    for name in BUILTIN_NETWORKS:
        api.networks.setdefault(name, Network(new_id(), name, {"none": "null"}.get(name, name), _now(), {}, {}))

    def find_net(ref: str) -> Network:
        for n in api.networks.values():
            if ref in (n.name, n.id) or (len(ref) >= 6 and n.id.startswith(ref)):
                return n
        raise DockerError(404, f"network {ref} not found")

    @router.route("GET", "/networks")
    async def list_networks(req: Request) -> Response:
        filters = req.filters()
        out = []
        for n in api.networks.values():
            if "name" in filters and not any(v in n.name for v in filters["name"]):
                continue
            if "id" in filters and not any(n.id.startswith(v) for v in filters["id"]):
                continue
            if "label" in filters and not all(
                v.partition("=")[0] in n.labels and (not v.partition("=")[1] or n.labels[v.partition("=")[0]]
                                                     == v.partition("=")[2]) for v in filters["label"]):  # fmt: skip
                continue
            out.append(net_doc(n))
        return json_response(out)

    @router.route("GET", "/networks/{id}")
    async def inspect_network(req: Request) -> Response:
        return json_response(net_doc(find_net(req.params["id"])))

    @router.route("POST", "/networks/create")
    async def create_network(req: Request) -> Response:
        body = req.json(required=True)
        name = body.get("Name")
        if not name or not isinstance(name, str):
            raise DockerError(400, "network name is required")
        if any(n.name == name for n in api.networks.values()):
            raise DockerError(409, f"network with name {name} already exists")
        driver = body.get("Driver") or "bridge"
        if driver != "bridge":
            raise DockerError(400, f"network driver {driver!r} is not supported by this node (zlayer): its containers "
                                   "share the node's bridge")  # fmt: skip
        n = Network(new_id(), name, driver, _now(), dict(body.get("Labels") or {}), dict(body.get("Options") or {}),
                    bool(body.get("Internal")), bool(body.get("Attachable")))  # fmt: skip
        api.networks[name] = n
        api.save_objects()
        api.events.add("network", "create", n.id, {"name": name, "type": driver})
        return json_response({"Id": n.id, "Warning": ""}, 201)

    @router.route("DELETE", "/networks/{id}")
    async def remove_network(req: Request) -> Response:
        n = find_net(req.params["id"])
        if n.name in BUILTIN_NETWORKS:
            raise DockerError(403, f"{n.name} is a pre-defined network and cannot be removed")
        users = [c.name for c in api.names.by_id.values() if n.name in c.networks]
        if users:
            raise DockerError(403, f"error while removing network: network {n.name} id {n.id} has active endpoints")
        api.networks.pop(n.name, None)
        api.save_objects()
        api.events.add("network", "destroy", n.id, {"name": n.name, "type": n.driver})
        return no_content()

    @router.route("POST", "/networks/{id}/connect")
    async def connect_network(req: Request) -> Response:
        n = find_net(req.params["id"])
        body = req.json(required=True)
        c = api.names.find(str(body.get("Container", "")))
        c.networks[n.name] = {"Aliases": ((body.get("EndpointConfig") or {}).get("Aliases"))}
        await api.keep(c)
        return no_content(200)

    @router.route("POST", "/networks/{id}/disconnect")
    async def disconnect_network(req: Request) -> Response:
        n = find_net(req.params["id"])
        body = req.json(required=True)
        c = api.names.find(str(body.get("Container", "")))
        c.networks.pop(n.name, None)
        await api.keep(c)
        return no_content(200)

    @router.route("POST", "/networks/prune")
    async def prune_networks(req: Request) -> Response:
        gone = []
        for n in list(api.networks.values()):
            if n.name not in BUILTIN_NETWORKS and not any(n.name in c.networks for c in api.names.by_id.values()):
                api.networks.pop(n.name, None)
                gone.append(n.name)
        api.save_objects()
        return json_response({"NetworksDeleted": gone})

    # ------------------------------------------------------------------------------------------- volumes

    def volume_doc(v: Volume) -> dict[str, Any]:
        return {"Name": v.name, "Driver": v.driver, "Mountpoint": str(api.data_dir / "volumes" / v.name),
                "CreatedAt": v.created, "Labels": v.labels or None, "Scope": "local", "Options": None}  # fmt: skip

    def find_vol(name: str) -> Volume:
        v = api.volumes.get(name)
        if v is None:
            raise DockerError(404, f"get {name}: no such volume")
        return v

    @router.route("GET", "/volumes")
    async def list_volumes(req: Request) -> Response:
        return json_response({"Volumes": [volume_doc(v) for v in api.volumes.values()], "Warnings": None})

    @router.route("POST", "/volumes/create")
    async def create_volume(req: Request) -> Response:
        body = req.json()
        name = body.get("Name") or new_id()
        if not isinstance(name, str) or not name[0].isalnum() or not all(ch.isalnum() or ch in "_.-" for ch in name):
            raise DockerError(400, f"create {name}: volume name is too short or holds characters other than "
                                   "[a-zA-Z0-9][a-zA-Z0-9_.-]")  # fmt: skip
        if (body.get("Driver") or "local") != "local":
            raise DockerError(400, f"volume driver {body['Driver']!r} is not supported by this node (zlayer)")
        v = api.volumes.get(name) or Volume(name, _now(), dict(body.get("Labels") or {}))
        api.volumes[name] = v
        api.save_objects()
        (api.data_dir / "volumes" / name).mkdir(parents=True, exist_ok=True, mode=0o700)
        api.events.add("volume", "create", name, {"driver": "local"})
        return json_response(volume_doc(v), 201)

    @router.route("GET", "/volumes/{name}")
    async def inspect_volume(req: Request) -> Response:
        return json_response(volume_doc(find_vol(req.params["name"])))

    @router.route("DELETE", "/volumes/{name}")
    async def remove_volume(req: Request) -> Response:
        v = find_vol(req.params["name"])
        users = [c.name for c in api.names.by_id.values()
                 if any(getattr(s, "name", None) == v.name for s in c.sa.spec.storage)]  # fmt: skip
        if users and not req.flag("force"):
            raise DockerError(409, f"remove {v.name}: volume is in use - [{', '.join(users)}]")
        api.volumes.pop(v.name, None)
        api.save_objects()
        import shutil

        await asyncio.to_thread(shutil.rmtree, api.data_dir / "volumes" / v.name, True)
        api.events.add("volume", "destroy", v.name, {"driver": "local"})
        return no_content()

    @router.route("POST", "/volumes/prune")
    async def prune_volumes(req: Request) -> Response:
        return json_response({"VolumesDeleted": None, "SpaceReclaimed": 0})


async def _until_closed(items: Any) -> Any:
    async for x in items:
        yield x


def _arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(m, m)


__all__ = ["register"]
