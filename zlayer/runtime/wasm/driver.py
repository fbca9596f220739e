"""WasmRuntime: the Runtime protocol for WebAssembly workloads, beside the Linux one.

A replica is a worker process (:mod:`zlayer.runtime.wasm.worker`, which says why a process) running one WASIp1
command module or ``wasi:cli/run`` component from a WASM artifact in the node's image store, or serving a
``wasi:http/incoming-handler`` component over HTTP on a loopback address of its own (``state.json``'s ``ip``, the
replica's address for the proxy and health checks) and the service's backend port. Layout under
``data_dir``: ``wasm/instances/<id>/`` holds ``config.json`` (what the worker runs: artifact, argv, env, preopens,
limits), ``state.json`` (created/started, pid) and, once it ended, ``result.json`` (exit code and why); compiled
programs are cached in ``wasm/compiled/`` by digest; logs go to the same ``<log_dir>/<id>.log`` CRI files as
containers. Nothing lives only in memory: a new WasmRuntime on the same ``data_dir`` adopts the workers an earlier
daemon started.

What a replica gets from its spec: ``argv`` = the service name, then ``command.entrypoint`` and ``command.args``;
``env`` resolved as for containers (``$E:``/``$S:``); ``storage`` entries as preopened directories at their targets
(bind, named and anonymous volumes; a tmpfs becomes an anonymous one); limits: ``wasm.max_memory`` (else
``resources.memory``) caps linear memory, ``wasm.max_fuel`` bounds instructions, an explicit ``wasm.request_timeout``
bounds a run's time (epoch deadline). ``stop`` ends the worker with the stop signal wherever the guest is, ``kill``
sends the signal asked for; ``pause`` stops the process.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import json
import os
import shutil
import signal as _signal
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from zlayer.errors import ConflictError, ImageError, NotFoundError, RuntimeFailure
from zlayer.paths import private_dir, write_atomic
from zlayer.runtime import logfile
from zlayer.runtime.protocol import (
    ContainerId,
    ContainerInfo,
    ContainerState,
    ContainerStats,
    ContainerUsage,
    ExecResult,
    ExecSession,
    FileChange,
    LogLine,
    PathStat,
    ProcessInfo,
)

if TYPE_CHECKING:
    from zlayer.spec.models import ServiceSpec

DEFAULT_GRACE = 10.0
EARLY_EXIT_WINDOW = 0.05
EARLY_EXIT_LINES = 40


class WasmImages(Protocol):
    """Where WasmRuntime gets its programs: the image store's pull, and a WASM artifact's binary and digest."""

    async def pull(self, image: str, policy: str = "if_not_present") -> None: ...

    async def wasm_artifact(self, image: str) -> tuple[Path, str]: ...


def _now() -> str:
    return logfile.rfc3339_now()


def _signum(sig: int | str) -> int:
    if isinstance(sig, int) or str(sig).isdigit():
        return int(sig)
    name = str(sig).upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(getattr(_signal, name))
    except AttributeError:
        raise RuntimeFailure(f"unknown signal {sig!r}") from None


def _alive(pid: int, marker: str) -> bool:
    """``pid`` is still our worker (not a reused pid): its command line names the replica's directory."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class WasmRuntime:
    """WASM replicas on this node, one worker process each (see the module doc)."""

    name = "wasm"
    host_network = True  # a worker is a process of the node: WASIp1 guests open no sockets of their own

    def __init__(self, data_dir: Path, images: WasmImages, *, log_dir: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.images = images
        self.root = self.data_dir / "wasm" / "instances"
        self.cache = self.data_dir / "wasm" / "compiled"
        self.log_dir = Path(log_dir) if log_dir else self.data_dir / "logs"
        for d in (self.data_dir / "wasm", self.root, self.cache, self.log_dir):
            private_dir(d)
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self.early_exit_window = EARLY_EXIT_WINDOW

    # ------------------------------------------------------------------------------------------------ files

    def _dir(self, cid: ContainerId | str) -> Path:
        return self.root / str(cid)

    def log_path(self, cid: ContainerId | str) -> Path:
        return self.log_dir / f"{cid}.log"

    def _read(self, cid: str, name: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self._dir(cid) / name).read_text()))
        except FileNotFoundError:
            if name == "state.json":
                raise NotFoundError(f"WASM instance {cid} not found") from None
            return {}
        except (OSError, ValueError) as e:
            raise RuntimeFailure(f"WASM instance {cid}: {name} is unreadable: {e}") from None

    def _write_state(self, cid: str, st: dict[str, Any]) -> None:
        write_atomic(self._dir(cid) / "state.json", json.dumps(st), durable=False)

    # ------------------------------------------------------------------------------------------------ lifecycle

    async def pull(self, image: str, *, policy: str = "if_not_present") -> None:
        await self.images.pull(image, policy=policy)

    async def create(self, cid: ContainerId, service: ServiceSpec, *, dns: Sequence[str] = ()) -> None:
        name = str(cid)
        spec = service
        with contextlib.suppress(NotFoundError):
            if (await self.state(cid)).running:
                raise ConflictError(f"WASM instance {name} already exists and is running")
            await self.remove(cid, force=True)
        artifact, digest = await self.images.wasm_artifact(spec.image.name)
        limits = _limits(spec)
        # Compile (or load from the cache) and link here, in a thread: a corrupt module or a missing import is
        # refused at create, naming the file and the import, and the worker starts from the cache.
        http = await asyncio.to_thread(_prepare, artifact, digest, self.cache, bool(limits["fuel"]), spec.image.name)
        d = self._dir(name)
        d.mkdir(parents=True, exist_ok=False)
        os.chmod(d, 0o700)
        anonymous: list[str] = []
        try:
            preopens, anonymous = _preopens(spec, self.data_dir, name)
            env = _env(spec, name)
            argv = [cid.service, *(spec.command.entrypoint or []), *(spec.command.args or [])]
            config: dict[str, Any] = {
                "artifact": str(artifact),
                "digest": digest,
                "cache": str(self.cache),
                "argv": argv,
                "env": env,
                "preopens": preopens,
                "limits": limits,
                "log_path": str(self.log_path(name)),
                "plugin": _plugin(spec, cid, self.data_dir, d, env),
            }
            if http:
                wasm = spec.wasm
                config["listen"] = [self._free_address(name), spec.backend_port]
                config["min_instances"] = int(wasm.min_instances) if wasm is not None else 0
                config["max_instances"] = int(wasm.max_instances) if wasm is not None else 10
                config["idle_timeout"] = float(wasm.idle_timeout) if wasm is not None else 300.0
                config["http_outgoing"] = _http_client(spec)
                config["allowed_hosts"] = list(wasm.allowed_hosts) if wasm is not None else []
                if limits["deadline_s"] is None:  # a request always has a deadline: the spec's default 30 s
                    limits["deadline_s"] = float(wasm.request_timeout) if wasm is not None else 30.0
            write_atomic(d / "config.json", json.dumps(config), durable=False)  # 0600: env may hold secrets
            grace = spec.stop_grace_period
            self._write_state(
                name,
                {
                    "id": name,
                    "status": "created",
                    "image": spec.image.name,
                    "digest": digest,
                    "created_at": _now(),
                    "stop_grace_period": grace if grace is not None else DEFAULT_GRACE,
                    "memory_limit": limits["memory_bytes"],
                    "anonymous_volumes": anonymous,
                    "labels": dict(spec.labels),
                    "ip": config["listen"][0] if http else "",
                },
            )
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            for p in anonymous:
                shutil.rmtree(p, ignore_errors=True)
            raise

    async def start(self, cid: ContainerId) -> None:
        name = str(cid)
        st = self._read(name, "state.json")
        if st["status"] != "created":
            raise ConflictError(f"WASM instance {name} is {st['status']}, not created")
        d = self._dir(name)
        err = open(d / "worker.err", "wb")  # noqa: SIM115 - handed to the child
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "zlayer.runtime.wasm.worker",
                str(d),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # outlives a daemon restart; a signal to the daemon's group misses it
                env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
            )
        finally:
            err.close()
        self._procs[name] = proc
        self._ended[name] = asyncio.Event()
        st.update(status="running", pid=proc.pid, started_at=_now())
        self._write_state(name, st)
        asyncio.get_running_loop().create_task(self._reap(name, proc), name=f"wasm reap {name}")
        if st.get("ip"):
            # an HTTP component: started once it listens with an instance made (or ended trying)
            while not (d / "ready").exists() and not self._ended[name].is_set():
                await asyncio.sleep(0.005)
            if not self._ended[name].is_set():
                return
        try:
            await asyncio.wait_for(self._ended[name].wait(), self.early_exit_window)
        except TimeoutError:
            return
        ended = await self.state(cid)
        raise RuntimeFailure(f"WASM instance {name} exited at once with code {ended.exit_code}" + self._tail(name))

    async def _reap(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        with contextlib.suppress(NotFoundError, RuntimeFailure):
            st = self._read(name, "state.json")
            res = self._read(name, "result.json")
            if not res:  # ended by a signal (stop, kill) before it could say how it ended
                sig = -code if code < 0 else None
                res = {
                    "exit_code": 128 + sig if sig else code,
                    "signal": sig,
                    "reason": "signal" if sig else "runtime_error",
                    "finished_at": _now(),
                }
                write_atomic(self._dir(name) / "result.json", json.dumps(res), durable=False)
            st["status"] = "stopped"
            self._write_state(name, st)
        self._procs.pop(name, None)
        ev = self._ended.get(name)
        if ev is not None:
            ev.set()

    def _tail(self, name: str) -> str:
        lines = logfile.read_lines(self.log_path(name))[-EARLY_EXIT_LINES:]
        return "; last output:\n" + "\n".join(str(x) for x in lines) if lines else ""

    def _pid(self, name: str) -> int:
        st = self._read(name, "state.json")
        pid = int(st.get("pid") or 0)
        if st["status"] == "running" and pid and _alive(pid, str(self._dir(name))):
            return pid
        return 0

    async def stop(self, cid: ContainerId, timeout: float | None = None) -> ContainerState:
        name = str(cid)
        st = self._read(name, "state.json")
        grace = float(timeout if timeout is not None else st.get("stop_grace_period", DEFAULT_GRACE))
        pid = self._pid(name)
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, _signal.SIGCONT)  # a paused worker must run to die
                os.kill(pid, _signal.SIGTERM)  # the worker keeps SIGTERM's default action: it ends at once
            try:
                await asyncio.wait_for(self._wait_gone(name), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, _signal.SIGKILL)
                await self._wait_gone(name)
        elif st["status"] == "created":
            st["status"] = "stopped"
            self._write_state(name, st)
        return await self.state(cid)

    async def _wait_gone(self, name: str) -> None:
        ev = self._ended.get(name)
        if ev is not None and name in self._procs:
            await ev.wait()
            return
        # an earlier daemon's worker: not our child, so watch its pid
        while self._pid(name):
            await asyncio.sleep(0.05)
        st = self._read(name, "state.json")
        if st["status"] == "running":
            if not self._read(name, "result.json"):
                res = {"exit_code": 137, "signal": 9, "reason": "signal", "finished_at": _now()}
                write_atomic(self._dir(name) / "result.json", json.dumps(res), durable=False)
            st["status"] = "stopped"
            self._write_state(name, st)

    async def kill(self, cid: ContainerId, signal: int | str = "KILL") -> None:
        pid = self._pid(str(cid))
        if not pid:
            raise ConflictError(f"WASM instance {cid} is not running")
        os.kill(pid, _signum(signal))

    async def wait(self, cid: ContainerId) -> ContainerState:
        await self._wait_gone(str(cid))
        return await self.state(cid)

    async def remove(self, cid: ContainerId, *, force: bool = False) -> None:
        name = str(cid)
        try:
            st = self._read(name, "state.json")
        except NotFoundError:
            return
        if self._pid(name):
            if not force:
                raise ConflictError(f"WASM instance {name} is running: stop it first or remove with force")
            await self.stop(cid, timeout=0)
        await asyncio.to_thread(shutil.rmtree, self._dir(name), True)
        for p in st.get("anonymous_volumes", []):
            shutil.rmtree(p, ignore_errors=True)
        self._ended.pop(name, None)

    def _free_address(self, name: str) -> str:
        """A loopback address no other WASM replica of this node listens on (127.77.0.0/16): each HTTP replica
        serves the service's port on an address of its own, as a container does on its own interface."""
        used = set()
        for d in self.root.iterdir():
            if d.name != name:
                with contextlib.suppress(NotFoundError, RuntimeFailure):
                    used.add(self._read(d.name, "state.json").get("ip"))
        seed = zlib.crc32(name.encode()) % 65024
        for i in range(65024):
            n = (seed + i) % 65024 + 256  # 127.77.1.0 onwards: no .0 network or low addresses
            ip = f"127.77.{n >> 8}.{n & 255}"
            if ip not in used:
                return ip
        raise RuntimeFailure("no free loopback address for another WASM HTTP replica (65,024 in use)")

    # ------------------------------------------------------------------------------------------------ exec

    async def exec(
        self,
        cid: ContainerId,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> ExecResult:
        raise ConflictError(f"{cid} is a WASM instance: it has no processes to exec into")

    async def exec_session(
        self,
        cid: ContainerId,
        argv: Sequence[str],
        *,
        stdin: bool = False,
        tty: bool = False,
        size: tuple[int, int] | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> ExecSession:
        raise ConflictError(f"{cid} is a WASM instance: it has no processes to exec into")

    # ------------------------------------------------------------------------------------------------ reading

    async def logs(
        self, cid: ContainerId, *, tail: int | None = None, follow: bool = False, since: str | None = None
    ) -> AsyncIterator[LogLine]:
        name = str(cid)
        base = self.log_path(name)
        if not base.exists() and not self._dir(name).exists():
            raise NotFoundError(f"WASM instance {name} has no logs", where=str(base))

        def ended() -> bool:
            try:
                return not self._pid(name)
            except (NotFoundError, RuntimeFailure):
                return True

        async for line in logfile.stream(base, tail=tail, follow=follow, since=since, ended=ended):
            yield line

    async def stats(self, cid: ContainerId) -> ContainerStats:
        """The worker's figures: ``memory_usage_bytes`` is its instances' linear memory in RAM (the resident part
        of wasmtime's reservations for them), the peak its process's; an HTTP component's ``calls`` (handle calls,
        ``call_errors`` of them trapped or failed) and ``instances`` (alive in its pool) from its stats.json."""
        name = str(cid)
        st = self._read(name, "state.json")
        pid = self._pid(name)
        rss = peak = cpu = 0
        if pid:
            with contextlib.suppress(OSError, ValueError, IndexError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = int(line.split()[1]) * 1024
                rss = _linear_memory(pid)
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])
                cpu = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
        counts = self._read(name, "stats.json") if st.get("ip") else {}
        return ContainerStats(
            cpu_usage_ns=cpu,
            memory_usage_bytes=rss,
            memory_limit_bytes=st.get("memory_limit"),
            memory_max_usage_bytes=peak or None,
            pids_current=1 if pid else 0,
            timestamp=time.time(),
            calls=counts.get("calls"),
            call_errors=counts.get("errors"),
            instances=counts.get("instances"),
        )

    async def usage(self, cid: ContainerId) -> ContainerUsage:
        st = await self.stats(cid)  # two small /proc reads already
        return ContainerUsage(st.cpu_usage_ns, st.memory_usage_bytes, st.memory_limit_bytes)

    async def state(self, cid: ContainerId) -> ContainerState:
        return self._state(str(cid))

    def _state(self, name: str) -> ContainerState:
        st = self._read(name, "state.json")
        if st["status"] == "created":
            return ContainerState("pending")
        if st["status"] == "running":
            pid = self._pid(name)
            if pid:
                return ContainerState("running", pid=pid, started_at=st.get("started_at", ""), ip=st.get("ip", ""))
        res = self._read(name, "result.json") or {"exit_code": 255, "reason": "runtime_error: worker vanished"}
        return ContainerState(
            "exited",
            exit_code=int(res["exit_code"]),
            signal=res.get("signal"),
            reason=str(res.get("reason", "exited")),
            started_at=st.get("started_at", ""),
            finished_at=str(res.get("finished_at", "")),
        )

    def _info(self, name: str) -> ContainerInfo:
        st = self._read(name, "state.json")
        return ContainerInfo(
            id=name,
            state=self._state(name),
            image=st.get("image", ""),
            created_at=st.get("created_at", ""),
            bundle=str(self._dir(name)),
            log_path=str(self.log_path(name)),
            labels={**st.get("labels", {}), "zlayer.runtime": "wasm"},
        )

    async def list(self) -> list[ContainerInfo]:
        out = []
        for d in sorted(self.root.iterdir()) if self.root.exists() else []:
            with contextlib.suppress(NotFoundError, RuntimeFailure):
                out.append(self._info(d.name))
        return out

    async def inspect(self, cid: ContainerId) -> ContainerInfo:
        return self._info(str(cid))

    async def pause(self, cid: ContainerId) -> None:
        await self.kill(cid, _signal.SIGSTOP)

    async def unpause(self, cid: ContainerId) -> None:
        await self.kill(cid, _signal.SIGCONT)

    async def top(self, cid: ContainerId) -> builtins.list[ProcessInfo]:
        pid = self._pid(str(cid))
        if not pid:
            return []
        st = self._read(str(cid), "state.json")
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        return [ProcessInfo(uid=os.getuid(), pid=pid, ppid=os.getpid(), stime=st.get("started_at", ""), cmd=cmd)]

    # A WASM guest has no stdio to attach to and no filesystem of its own (only the preopens it is given).

    async def attach(self, cid: ContainerId) -> ExecSession:
        raise ConflictError(f"{cid} is a WASM guest: it has no stdio to attach to")

    async def changes(self, cid: ContainerId) -> builtins.list[FileChange]:
        raise ConflictError(f"{cid} is a WASM guest: it has no filesystem of its own")

    async def path_stat(self, cid: ContainerId, path: str) -> PathStat:
        raise ConflictError(f"{cid} is a WASM guest: it has no filesystem of its own")

    async def get_archive(self, cid: ContainerId, path: str) -> tuple[bytes, PathStat]:
        raise ConflictError(f"{cid} is a WASM guest: it has no filesystem of its own")

    async def put_archive(self, cid: ContainerId, path: str, tar: bytes) -> None:
        raise ConflictError(f"{cid} is a WASM guest: it has no filesystem of its own")


# ---------------------------------------------------------------------------------------------------- spec → worker


def _prepare(artifact: Path, digest: str, cache: Path, fuel: bool, image: str) -> bool:
    """Compile and link the program (refusing a bad one here); whether it is an HTTP component."""
    from zlayer.runtime.wasm.engine import P2Http, load_program

    try:
        return isinstance(load_program(artifact, digest, cache, fuel=fuel, where=f"image {image}"), P2Http)
    except ImageError as e:
        raise ImageError(f"image {image}: {e.message}", where=image) from None


def _linear_memory(pid: int) -> int:
    """The resident bytes of the worker's WASM linear memories. wasmtime reserves each memory as one anonymous
    mapping of gigabytes and makes its accessible pages read-write from the start, so in the process's map a memory
    is a read-write anonymous region directly followed by a no-access one of at least 1 GiB (the rest of its
    reservation); nothing else in the process looks like that."""
    regions: list[tuple[int, int, str, bool, int]] = []  # start, end, perms, anonymous, rss
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                lo, hi = parts[0].split("-")
                regions.append((int(lo, 16), int(hi, 16), parts[1], len(parts) < 6, 0))
            elif parts[0] == "Rss:" and regions:
                start, end, perms, anon, _ = regions[-1]
                regions[-1] = (start, end, perms, anon, int(parts[1]) * 1024)
    total = 0
    for cur, nxt in itertools.pairwise(regions):
        rest = nxt[3] and nxt[0] == cur[1] and nxt[2].startswith("---") and nxt[1] - nxt[0] >= 1 << 30
        if rest and cur[3] and cur[2].startswith("rw"):
            total += cur[4]
    return total


def _limits(spec: ServiceSpec) -> dict[str, Any]:
    from zlayer.spec.scalars import parse_memory

    wasm = spec.wasm
    memory = None
    if wasm is not None and wasm.max_memory:
        memory = parse_memory(wasm.max_memory)
    elif spec.resources.memory:
        memory = spec.resources.memory_bytes()
    deadline = None
    if wasm is not None and "request_timeout" in wasm.model_fields_set:
        deadline = float(wasm.request_timeout)
    return {"memory_bytes": memory, "fuel": int(wasm.max_fuel) if wasm is not None else 0, "deadline_s": deadline}


def _env(spec: ServiceSpec, hostname: str) -> list[list[str]]:
    from zlayer.runtime.linux.bundle import resolve_env

    out = []
    for item in resolve_env(spec, {}, hostname=hostname, tty=False):
        key, _, value = item.partition("=")
        if key == "PATH" and "PATH" not in spec.env:
            continue  # a search path means nothing to a WASM guest
        out.append([key, value])
    return out


def _plugin(spec: ServiceSpec, cid: ContainerId, data_dir: Path, d: Path, env: list[list[str]]) -> dict[str, Any]:
    """What a component's ``zlayer:plugin/*`` imports read (plugin.py): config from the resolved env, the key-value
    namespace's database, the spec's secrets by name (a node without a secrets resolver has their names only),
    the metrics file, and the interfaces the spec's capabilities allow (``wasm.capabilities``, else the WASM
    service type's defaults; all five for an image detected as WASM under another type)."""
    from zlayer.spec.rules import WASM_TYPES

    wasm = spec.wasm
    names = ("config", "keyvalue", "logging", "secrets", "metrics")
    if wasm is not None and wasm.capabilities is not None:
        allowed = [n for n in names if getattr(wasm.capabilities, n)]
    elif spec.service_type in WASM_TYPES:
        allowed = [n for n, on in zip(names, WASM_TYPES[spec.service_type][1][:5], strict=True) if on]
    else:
        allowed = list(names)
    if wasm is not None and not wasm.kv_enabled:
        allowed = [n for n in allowed if n != "keyvalue"]
    namespace = (wasm.kv_namespace if wasm is not None and wasm.kv_namespace else cid.service).replace("/", "_")
    return {
        "config": dict(env),
        "kv_path": str(data_dir / "wasm" / "kv" / f"{namespace}.sqlite"),
        "kv_max_value_size": int(wasm.kv_max_value_size) if wasm is not None else 1_048_576,
        "secrets": {n: None for n in (wasm.secrets if wasm is not None else [])},
        "metrics_path": str(d / "metrics.json"),
        "allowed": allowed,
    }


def _http_client(spec: ServiceSpec) -> bool:
    """Whether the component's wasi:http/outgoing-handler may send: ``wasm.allow_http_outgoing`` and the
    ``http_client`` capability (``wasm.capabilities``, else the WASM service type's default)."""
    from zlayer.spec.rules import CAPABILITIES, WASM_TYPES

    wasm = spec.wasm
    if wasm is not None and not wasm.allow_http_outgoing:
        return False
    if wasm is not None and wasm.capabilities is not None:
        return bool(wasm.capabilities.http_client)
    if spec.service_type in WASM_TYPES:
        return bool(WASM_TYPES[spec.service_type][1][CAPABILITIES.index("http_client")])
    return True


def _preopens(spec: ServiceSpec, data_dir: Path, name: str) -> tuple[list[list[Any]], list[str]]:
    from zlayer.runtime.linux.volumes import prepare_volumes
    from zlayer.spec.models import AnonymousStorage, StorageSpec, TmpfsStorage

    # a tmpfs is a directory of the node for a guest: an anonymous volume, gone with the replica
    storage: list[StorageSpec] = [
        AnonymousStorage(type="anonymous", target=s.target) if isinstance(s, TmpfsStorage) else s for s in spec.storage
    ]
    with tempfile.TemporaryDirectory() as empty:  # nothing to copy up: a WASM image has no filesystem
        vols = prepare_volumes(storage, data_dir=data_dir, container=name, rootfs=Path(empty))
    preopens: list[list[Any]] = [
        [m["source"], m["destination"], "ro" in m["options"]] for m in vols.mounts if m["type"] == "bind"
    ]
    if spec.wasm is not None:
        for p in spec.wasm.preopens:
            if not Path(p.source).is_dir():
                raise RuntimeFailure(f"wasm.preopens: {p.source}: no such directory on this node")
            preopens.append([p.source, p.target, bool(p.readonly)])
    return preopens, [str(p) for p in vols.anonymous]


__all__ = ["WasmImages", "WasmRuntime"]
