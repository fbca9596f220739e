"""The Python SDK: ``zlayer.Client``, async HTTP to a zlayer daemon over its unix socket (or TCP with a token).

The method names and shapes follow ZLayer's Python package (``deploy``, ``ps``, ``logs``, ``exec``, ``status``,
``scale``, ``stop``) and return the daemon's JSON as plain dicts and lists. Errors from the daemon come back as the
matching :mod:`zlayer.errors` class, carrying the daemon's stable ``code``, its message and the field path.

>>> async with zlayer.Client() as client:          # doctest: +SKIP
...     await client.deploy(open("app.zlayer.yml").read())
...     print(await client.status("app"))
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from zlayer.client.unix_http import TransportError, UnixHTTP
from zlayer.errors import (
    AuthError,
    ConflictError,
    DaemonError,
    DiskFullError,
    ForbiddenError,
    NotFoundError,
    SpecError,
    UsageError,
    ZLayerError,
)
from zlayer.limits import load_json
from zlayer.paths import Paths
from zlayer.spec.problem import Problem

AUTO_START_DELAYS = (0.1, 0.2, 0.4, 0.8) + (1.0,) * 16  # ZLayer's: 20 tries, about 10 s

_BY_STATUS: dict[int, type[ZLayerError]] = {
    400: UsageError,
    401: AuthError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    507: DiskFullError,
}


_STATUS_OF = {"bad_request": 400, "unauthorized": 401, "forbidden": 403, "not_found": 404, "conflict": 409}


async def _feed_stdin(ws: Any, chunks: AsyncIterator[bytes]) -> None:
    async for chunk in chunks:
        if chunk:
            await ws.send(b"\x00" + chunk)
    await ws.send(b"\x00")  # end of input


async def _feed_resizes(ws: Any, sizes: AsyncIterator[tuple[int, int]]) -> None:
    async for rows, cols in sizes:
        await ws.send(json.dumps({"resize": [rows, cols]}))


def _error_from(status: int, body: bytes, what: str) -> ZLayerError:
    try:
        data = load_json(body, where=what)
    except ZLayerError:
        data = None
    if not isinstance(data, dict):
        text = body.decode(errors="replace").strip()[:300]
        return _BY_STATUS.get(status, DaemonError)(f"{what}: HTTP {status}" + (f": {text}" if text else ""))
    message = str(data.get("message") or data.get("error") or f"HTTP {status}")
    where, hint = data.get("where"), data.get("hint")
    err: ZLayerError
    if data.get("code") == "invalid_spec" or (status == 400 and data.get("problems")):
        err = SpecError(
            message, problems=[Problem.from_json(p) for p in data.get("problems") or []], where=where, hint=hint
        )
    else:
        err = _BY_STATUS.get(status, DaemonError)(message, where=where, hint=hint)
    err.code = str(data.get("code") or err.code)
    err.http_status = status
    return err


class Client:
    """An async client of one daemon.

    ``socket`` (default: the data dir's socket, ``/var/run/zlayer.sock`` for root) or ``host`` (``http://node:3669``,
    with ``token``). Over the socket a missing daemon is started as ``zlayer serve --daemon`` unless
    ``auto_start=False``: with the configuration ``zlayer serve`` was last started with for the data dir, else on its
    unix socket only; ``on_start`` is then told so in one line (default: a warning on the ``zlayer.client`` logger).
    """

    def __init__(
        self,
        socket: str | os.PathLike[str] | None = None,
        host: str | None = None,
        token: str | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        auto_start: bool = True,
        timeout: float = 300.0,
        on_start: Callable[[str], None] | None = None,
    ) -> None:
        self.paths = Paths.resolve(data_dir, str(socket) if socket else None)
        self.socket_path = self.paths.socket
        self.host = host.rstrip("/") if host else None
        self.token = token or os.environ.get("ZLAYER_API_TOKEN") if host else token
        self.auto_start = auto_start and host is None
        self.timeout = timeout
        self._session: Any = None  # aiohttp, for a daemon over TCP
        self._unix: UnixHTTP | None = None  # for the unix socket: no aiohttp to import (about 300 ms per command)
        self._started = False
        self._on_start = on_start

    def __repr__(self) -> str:
        return f"Client(host={self.host!r})" if self.host else f"Client(socket={str(self.socket_path)!r})"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._unix is not None:
            await self._unix.close()
            self._unix = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------------------------------ transport

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _unix_http(self) -> UnixHTTP:
        if self._unix is None:
            if not self._started:
                await ensure_daemon(self.paths, auto_start=self.auto_start, on_start=self._on_start)
                self._started = True
            self._unix = UnixHTTP(self.socket_path, self._headers())
        return self._unix

    async def _ensure(self) -> Any:
        import aiohttp

        if self._session is None:
            tls = self._tls() if self.host and self.host.startswith("https") else True
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls),
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
            )
        return self._session

    def _tls(self) -> Any:
        """The host's CAs, and the CAs a cluster node's API may present: ``ZLAYER_API_CA`` (a PEM file) and, on a
        node of the cluster, its CA (``DATA/cluster/tls/ca.crt``, when this user may read it) — a cluster node's API
        serves a certificate of the cluster CA (its advertise address and 127.0.0.1), which no public CA signed."""
        import ssl

        ctx = ssl.create_default_context()
        for ca in (os.environ.get("ZLAYER_API_CA"), self.paths.data_dir / "cluster" / "tls" / "ca.crt"):
            if ca and os.access(ca, os.R_OK):
                try:
                    ctx.load_verify_locations(cafile=str(ca))
                except (ssl.SSLError, OSError) as e:
                    raise UsageError(f"{ca}: not a PEM CA certificate ({e})", where="ZLAYER_API_CA") from None
        return ctx

    def _url(self, path: str) -> str:
        return f"{self.host or 'http://localhost'}{path}"

    @staticmethod
    def _target(path: str, params: dict[str, str]) -> str:
        return quote(path, safe="/:@!$&'()*+,;=-._~") + (f"?{urlencode(params)}" if params else "")

    def _unreachable(self, e: BaseException) -> DaemonError:
        return DaemonError(f"cannot reach the zlayer daemon at {self._where()}: {e}", hint="is `zlayer serve` running?")

    @staticmethod
    def _decode(status: int, body: bytes, raw: bool) -> Any:
        if raw:
            return body.decode(errors="replace")
        if status == 204 or not body:
            return None
        return load_json(body, where="the daemon's answer", error=DaemonError)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        raw: bool = False,
    ) -> Any:
        """One API call; returns the decoded JSON (or text when ``raw``), raises ZLayerError on any error status."""
        clean = {
            k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (params or {}).items() if v is not None
        }
        if self.host is None:
            http = await self._unix_http()
            body = None if json_body is None else json.dumps(json_body).encode()
            try:
                target = self._target(path, clean)
                status, got = await asyncio.wait_for(http.request(method, target, body), self.timeout)
            except TransportError as e:
                if e.connect:
                    raise self._unreachable(e) from e
                raise DaemonError(f"request {method} {path} to {self._where()} failed: {e}") from e
            except TimeoutError as e:
                raise DaemonError(f"{method} {path} to {self._where()}: no answer in {self.timeout:g}s") from e
            if status >= 400:
                raise _error_from(status, got, f"{method} {path}")
            return self._decode(status, got, raw)
        import aiohttp

        session = await self._ensure()
        try:
            async with session.request(
                method, self._url(path), json=json_body, params=clean, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                got = await resp.read()
                if resp.status >= 400:
                    raise _error_from(resp.status, got, f"{method} {path}")
                return self._decode(resp.status, got, raw)
        except aiohttp.ClientConnectorError as e:
            raise DaemonError(f"cannot reach the zlayer daemon at {self._where()}: {e.strerror or e}",
                              hint="is `zlayer serve` running?") from e  # fmt: skip
        except (aiohttp.ClientError, TimeoutError) as e:
            raise DaemonError(f"request {method} {path} to {self._where()} failed: {e or type(e).__name__}") from e

    async def transfer(
        self, method: str, path: str, *, body: bytes | None = None, params: dict[str, Any] | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """One call whose bodies are bytes (a tar in or out: the archive routes); the answer's body and headers
        (lower-cased names). A HEAD answer has no body to read."""
        clean = {k: str(v) for k, v in (params or {}).items() if v is not None}
        what = f"{method} {path}"
        if self.host is None:
            http = await self._unix_http()
            try:
                resp, writer = await asyncio.wait_for(http.send(method, self._target(path, clean), body), self.timeout)
                try:
                    got = b"" if method == "HEAD" else await resp.read()
                finally:
                    writer.close()
            except TransportError as e:
                raise (self._unreachable(e) if e.connect else DaemonError(f"{what} failed: {e}")) from e
            except TimeoutError as e:
                raise DaemonError(f"{what} to {self._where()}: no answer in {self.timeout:g}s") from e
            if resp.status >= 400:
                raise _error_from(resp.status, got, what)
            return got, resp.headers
        import aiohttp

        session = await self._ensure()
        try:
            async with session.request(method, self._url(path), data=body, params=clean,
                                       timeout=aiohttp.ClientTimeout(total=self.timeout)) as r:  # fmt: skip
                got = b"" if method == "HEAD" else await r.read()
                if r.status >= 400:
                    raise _error_from(r.status, got, what)
                return got, {k.lower(): v for k, v in r.headers.items()}
        except (aiohttp.ClientError, TimeoutError) as e:
            raise DaemonError(f"{what} to {self._where()} failed: {e or type(e).__name__}") from e

    async def stream(self, path: str, params: dict[str, Any] | None = None) -> AsyncIterator[str]:
        """Lines of a streaming (SSE) response; ``data:`` payloads are yielded without the prefix."""
        clean = {
            k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (params or {}).items() if v is not None
        }
        if self.host is None:
            http = await self._unix_http()
            try:
                resp, writer = await http.send("GET", self._target(path, clean))
            except TransportError as e:
                raise (self._unreachable(e) if e.connect else DaemonError(f"GET {path}: {e}")) from e
            try:
                if resp.status >= 400:
                    raise _error_from(resp.status, await resp.read(), f"GET {path}")
                async for raw_line in resp.lines():
                    line = raw_line.decode(errors="replace").rstrip("\r")
                    if line.startswith("data: "):
                        yield line[6:]
                    elif line.startswith("data:"):
                        yield line[5:]
            except TransportError as e:
                raise DaemonError(f"the stream GET {path} from {self._where()} broke off: {e}",
                                  hint="the daemon stopped or restarted; run the command again") from e  # fmt: skip
            finally:
                writer.close()
            return
        session = await self._ensure()
        import aiohttp

        try:
            async with session.get(self._url(path), params=clean) as resp:
                if resp.status >= 400:
                    raise _error_from(resp.status, await resp.read(), f"GET {path}")
                async for raw_line in resp.content:
                    line = raw_line.decode(errors="replace").rstrip("\n")
                    if line.startswith("data: "):
                        yield line[6:]
                    elif line.startswith("data:"):
                        yield line[5:]
        except aiohttp.ClientConnectorError as e:
            raise DaemonError(f"cannot reach the zlayer daemon at {self._where()}: {e.strerror or e}",
                              hint="is `zlayer serve` running?") from e  # fmt: skip
        except aiohttp.ClientError as e:
            raise DaemonError(f"the stream GET {path} from {self._where()} broke off: {e or type(e).__name__}",
                              hint="the daemon stopped or restarted; run the command again") from e  # fmt: skip

    def _where(self) -> str:
        return self.host or str(self.socket_path)

    # ------------------------------------------------------------------------------------------ ZLayer's SDK

    async def ps(self) -> list[dict[str, Any]]:
        """Every container the daemon runs (``GET /api/v1/containers``)."""
        result: list[dict[str, Any]] = await self.request("GET", "/api/v1/containers")
        return result

    async def deploy(self, spec_yaml: str) -> dict[str, Any]:
        """Create or update a deployment from YAML text; returns the deployment's details."""
        result: dict[str, Any] = await self.request("POST", "/api/v1/deployments", json_body={"spec": spec_yaml})
        return result

    async def logs(self, container_id: str, follow: bool = False, tail: int | None = None) -> str:
        """One container's output as text, ``[stdout] line`` per line (``follow`` is accepted, as ZLayer's is)."""
        text: str = await self.request(
            "GET", f"/api/v1/containers/{container_id}/logs", params={"tail": tail}, raw=True
        )
        return text

    async def exec(self, deployment: str, service: str, cmd: list[str], replica: int | None = None) -> dict[str, Any]:
        """Run ``cmd`` in a replica (the first healthy one by default); ``{exit_code, stdout, stderr}``."""
        body: dict[str, Any] = {"command": list(cmd)}
        if replica is not None:
            body["replica"] = replica
        path = f"/api/v1/deployments/{deployment}/services/{service}/exec"
        result: dict[str, Any] = await self.request("POST", path, json_body=body)
        return result

    async def exec_attached(
        self,
        deployment: str,
        service: str,
        cmd: list[str],
        output: Callable[[str, bytes], None],
        *,
        replica: int | None = None,
        stdin: AsyncIterator[bytes] | None = None,
        tty: bool = False,
        size: tuple[int, int] | None = None,
        resizes: AsyncIterator[tuple[int, int]] | None = None,
    ) -> dict[str, Any]:
        """Run ``cmd`` in a replica with its stdio attached (a WebSocket; see :mod:`zlayer.api.exec_stream`): each
        piece of output goes to ``output(stream, bytes)`` as it is written, ``stdin``'s chunks are its input (their
        end is the input's end; ``None``: no input). ``tty`` runs it on a terminal of ``size`` (rows, columns),
        resized to each of ``resizes`` as they come. Returns ``{exit_code, oom_killed}``."""
        from websockets.asyncio.client import connect, unix_connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus

        path = f"/api/v1/deployments/{quote(deployment)}/services/{quote(service)}/exec"
        if self.host:
            url = "ws" + self.host.removeprefix("http") + path  # http:// -> ws://, https:// -> wss://
            tls = {"ssl": self._tls()} if url.startswith("wss") else {}
            conn = connect(url, additional_headers=self._headers(), max_size=None, **tls)
        else:
            await self._unix_http()  # starts the daemon when asked to
            conn = unix_connect(str(self.socket_path), "ws://localhost" + path, max_size=None)
        rows, cols = size or (None, None)
        first = {"command": list(cmd), "replica": replica, "stdin": stdin is not None, "tty": tty, "rows": rows,
                 "cols": cols}  # fmt: skip
        try:
            async with conn as ws:
                await ws.send(json.dumps(first))
                feeders = [asyncio.ensure_future(_feed_stdin(ws, stdin))] if stdin is not None else []
                if resizes is not None:
                    feeders.append(asyncio.ensure_future(_feed_resizes(ws, resizes)))
                try:
                    async for msg in ws:
                        if isinstance(msg, bytes):
                            output("stdout" if msg[:1] == b"\x01" else "stderr", msg[1:])
                            continue
                        data = json.loads(msg)
                        if "exit_code" in data:
                            return dict(data)
                        raise _error_from(_STATUS_OF.get(data.get("error"), 500), msg.encode(), "exec")
                finally:
                    for feeder in feeders:
                        feeder.cancel()
        except InvalidStatus as e:
            raise _error_from(e.response.status_code, bytes(e.response.body or b""), "exec") from None
        except ConnectionClosed as e:
            if e.rcvd is not None and e.rcvd.code == 1008:  # refused: no, a bad or a reading-only token
                raise ForbiddenError(f"exec: {e.rcvd.reason}") from None
            raise DaemonError(f"exec: the connection to the daemon failed: {e}") from None
        except OSError as e:
            raise DaemonError(f"exec: the connection to the daemon failed: {e}") from None
        raise DaemonError("exec: the daemon closed the connection before the command ended")

    async def stop(self, deployment: str) -> None:
        """Delete a deployment: stop and remove all its replicas."""
        await self.request("DELETE", f"/api/v1/deployments/{deployment}")

    async def status(self, deployment: str) -> dict[str, Any]:
        """A deployment's details: status, services, per-service health and replicas."""
        result: dict[str, Any] = await self.request("GET", f"/api/v1/deployments/{deployment}")
        return result

    async def scale(self, deployment: str, service: str, replicas: int) -> dict[str, Any]:
        """Set a service's replica count; returns the service's details once converged."""
        path = f"/api/v1/deployments/{deployment}/services/{service}/scale"
        result: dict[str, Any] = await self.request("POST", path, json_body={"replicas": replicas})
        return result

    # ------------------------------------------------------------------------------------------ the rest

    async def health(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", "/health/ready")
        return result

    async def deployments(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request("GET", "/api/v1/deployments")
        return result

    async def services(self, deployment: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request("GET", f"/api/v1/deployments/{deployment}/services")
        return result

    async def service(self, deployment: str, service: str) -> dict[str, Any]:
        """A service's details: status (and its message), replicas, endpoints."""
        result: dict[str, Any] = await self.request("GET", f"/api/v1/deployments/{deployment}/services/{service}")
        return result

    async def service_containers(self, deployment: str, service: str) -> list[dict[str, Any]]:
        path = f"/api/v1/deployments/{deployment}/services/{service}/containers"
        result: list[dict[str, Any]] = await self.request("GET", path)
        return result

    async def service_logs(
        self, deployment: str, service: str, lines: int = 100, follow: bool = False, instance: str | None = None
    ) -> AsyncIterator[str]:
        path = f"/api/v1/deployments/{deployment}/services/{service}/logs"
        params = {"lines": lines, "follow": follow, "instance": instance}
        if follow:
            async for line in self.stream(path, params):
                yield line
            return
        text = await self.request("GET", path, params=params, raw=True)
        for line in text.splitlines():
            yield line

    async def events(self, deployment: str, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        async for data in self.stream(f"/api/v1/deployments/{deployment}/events", {"after": after}):
            yield load_json(data, where="the daemon's event stream", error=DaemonError)

    async def container(self, container_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/api/v1/containers/{container_id}")
        return result

    async def container_stats(self, container_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/api/v1/containers/{container_id}/stats")
        return result

    async def remove_container(self, container_id: str, force: bool = False) -> None:
        await self.request("DELETE", f"/api/v1/containers/{container_id}", params={"force": force})

    async def trigger_job(self, name: str, deployment: str | None = None) -> dict[str, Any]:
        path = f"/api/v1/jobs/{name}/trigger"
        result: dict[str, Any] = await self.request("POST", path, params={"deployment": deployment})
        return result

    async def job_executions(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request(
            "GET", f"/api/v1/jobs/{name}/executions", params={"limit": limit}
        )
        return result

    async def job_execution(self, execution_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/api/v1/jobs/{execution_id}/status")
        return result

    async def cancel_job(self, execution_id: str) -> None:
        await self.request("POST", f"/api/v1/jobs/{execution_id}/cancel")

    async def cron_jobs(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.request("GET", "/api/v1/cron")
        return result

    async def cron_job(self, name: str, deployment: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("GET", f"/api/v1/cron/{name}", params={"deployment": deployment})
        return result


async def ensure_daemon(
    paths: Paths, *, auto_start: bool = True, on_start: Callable[[str], None] | None = None
) -> None:
    """Make sure a daemon answers on ``paths.socket``; start ``zlayer serve --daemon`` if allowed (as ZLayer's
    client does: poll with backoff 0.1, 0.2, 0.4, 0.8 s then 1 s, 20 tries). The daemon started listens where
    ``zlayer serve`` was last started for the data dir (``DATA/serve.json``), else on its unix socket only — never
    on every interface because a user ran ``zlayer ps`` — and ``on_start`` hears where."""
    from zlayer.config import DaemonConfig, probe_socket

    _refuse_foreign_socket(paths.socket)
    if probe_socket(paths.socket):
        return
    if not auto_start:
        raise DaemonError(f"no zlayer daemon is listening on {paths.socket}", hint="start one with `zlayer serve`")
    if paths.socket.exists() and not os.access(paths.socket, os.W_OK):
        raise DaemonError(f"permission denied on {paths.socket}", hint="the daemon socket is root-only; use sudo")
    cfg = DaemonConfig.remembered(paths)
    argv = [sys.executable, "-m", "zlayer", *cfg.serve_argv(), "--daemon"]
    # only the remembered configuration decides the listeners, not serve's variables in this user's environment
    env = {k: v for k, v in os.environ.items() if k not in ("ZLAYER_API_BIND", "ZLAYER_METRICS_BIND")}
    env["ZLAYER_SPAWNER_PID"] = str(os.getpid())
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise DaemonError(
            f"could not start the zlayer daemon: {err.decode(errors='replace').strip()[-400:]}",
            hint=f"see {cfg.log_file}",
        )
    for delay in AUTO_START_DELAYS:
        if probe_socket(paths.socket):
            break
        await asyncio.sleep(delay)
    else:
        raise DaemonError(f"the zlayer daemon did not come up on {paths.socket}", hint=f"see {cfg.log_file}")
    where = f"its unix socket {paths.socket}"
    if cfg.bind or cfg.metrics_bind:
        tcp = ", ".join(f"{what} on {b}" for what, b in (("API", cfg.bind), ("metrics", cfg.metrics_bind)) if b)
        where += f" and TCP ({tcp}), as `zlayer serve` was last started for this data dir"
    else:
        where += " only"
    notice = f"no daemon was running for {paths.data_dir}: started one, listening on {where}; log {cfg.log_file}"
    (on_start or _log_start)(notice)


def _refuse_foreign_socket(path: Path) -> None:
    """A socket neither root's nor ours is not our daemon (a long data dir puts it in /tmp, where anyone could make
    one first): specs with their secrets must not go to it."""
    try:
        owner = path.lstat().st_uid
    except FileNotFoundError:
        return
    if owner not in (0, os.geteuid()):
        raise DaemonError(f"{path} belongs to uid {owner}, neither root nor you: it is not your zlayer daemon, "
                          "nothing was sent to it", where=str(path), hint="remove it, or pass --socket")  # fmt: skip


def _log_start(notice: str) -> None:
    import logging

    logging.getLogger("zlayer.client").warning("%s", notice)


def read_daemon_info(paths: Paths) -> dict[str, Any] | None:
    """``{data}/daemon.json`` as the running daemon wrote it, or None."""
    try:
        data: dict[str, Any] = json.loads(Path(paths.data_dir / "daemon.json").read_text())
        return data
    except (OSError, ValueError):
        return None


__all__ = ["Client", "ensure_daemon", "read_daemon_info"]
