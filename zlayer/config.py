"""How one daemon is configured (paths, listeners, token; ``DATA/serve.json``) and whether one answers on its socket.

Shared by the daemon, which runs with it, and the client, which starts one with it when none answers: it sits below
both. Every path is overridable so daemons run side by side."""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from zlayer.errors import UsageError
from zlayer.paths import API_PORT, Paths, write_atomic


@dataclass
class DaemonConfig:
    paths: Paths
    bind: str | None = f"0.0.0.0:{API_PORT}"
    metrics_bind: str | None = None
    token: str | None = None
    swagger: bool = True
    runtime: str = "auto"
    deployment_name: str = "zlayer"
    host_network: bool = False
    node_subnet: str | None = None  # None: a free /24 of 10.240.0.0/16, kept across restarts
    dns_port: int = 15353
    acme_email: str | None = None  # with acme_directory: ACME certificates for https hosts (else self-signed)
    acme_directory: str | None = None
    max_layer_size: str | None = None  # what one image layer may unpack to (Ki..Ti); None: env or 64Gi
    max_image_size: str | None = None  # what all layers of an image may unpack to; None: env or 256Gi
    docker_socket: str | None = None  # the Docker Engine API shim's socket (`serve --docker-socket`); None: off
    heartbeat_interval: float = 5.0  # cluster liveness (ZLayer's timings): renew the node's lease every 5 s,
    dead_after: float = 30.0  # and it is dead 30 s after the last renewal; `node init` writes them cluster-wide
    wg_port: int = 51420  # the overlay's WireGuard UDP port in a cluster (ZLayer's `serve --wg-port`, 51420)
    overlay_peer_timeout: float = 180.0  # an overlay peer without a handshake this long is unhealthy (ZLayer's 180 s)
    autoscale_interval: float = 10.0  # seconds between the autoscaler's evaluations (ZLayer's 10 s); 0: off
    api_tls_cert: str | None = None  # the TCP API over TLS (`serve --api-tls-cert/--api-tls-key`): PEM files
    api_tls_key: str | None = None
    api_tls_acme: str | None = None  # `serve --api-tls-acme DOMAIN`: the TCP API's certificate by ACME, renewed
    chosen: bool = False  # the operator started it (not a client's auto-start): once it listens, remember() it

    @property
    def state_db(self) -> Path:
        return self.paths.data_dir / "state.db"

    @property
    def token_file(self) -> Path:
        return self.paths.data_dir / "admin_bearer.token"

    @property
    def daemon_json(self) -> Path:
        return self.paths.data_dir / "daemon.json"

    @property
    def log_file(self) -> Path:
        return self.paths.log_dir / "daemon.log"

    @property
    def serve_file(self) -> Path:
        return self.paths.data_dir / SERVE_FILE

    def serve_argv(self) -> list[str]:
        """``zlayer`` arguments that start a daemon with this configuration (the secret excepted: it goes through
        the environment, never argv, which ps shows)."""
        argv = ["--data-dir", str(self.paths.data_dir), *(["--host-network"] if self.host_network else []),
                *(["--runtime", self.runtime] if self.runtime in ("wasm", "docker") else []), "serve",
                "--bind", self.bind or "none", "--socket", str(self.paths.socket), "--dns-port", str(self.dns_port),
                "--deployment-name", self.deployment_name]  # fmt: skip
        if self.metrics_bind:
            argv += ["--metrics-bind", self.metrics_bind]
        if not self.swagger:
            argv.append("--no-swagger")
        argv += ["--heartbeat-interval", f"{self.heartbeat_interval:g}", "--dead-after", f"{self.dead_after:g}"]
        if self.wg_port != 51420:
            argv += ["--wg-port", str(self.wg_port)]
        if self.overlay_peer_timeout != 180.0:
            argv += ["--overlay-peer-timeout", f"{self.overlay_peer_timeout:g}"]
        if self.autoscale_interval != 10.0:
            argv += ["--autoscale-interval", f"{self.autoscale_interval:g}"]
        for flag, value in (
            ("--acme-email", self.acme_email),
            ("--acme-directory", self.acme_directory),
            ("--max-layer-size", self.max_layer_size),
            ("--max-image-size", self.max_image_size),
            ("--docker-socket-path", self.docker_socket),
            ("--api-tls-cert", self.api_tls_cert),
            ("--api-tls-key", self.api_tls_key),
            ("--api-tls-acme", self.api_tls_acme),
        ):
            if value:
                argv += [flag, value]
        if self.docker_socket:
            argv.append("--docker-socket")
        return argv

    def remember(self) -> None:
        """Keep this as the data dir's configuration (``DATA/serve.json``): a daemon that a client command starts
        later, finding none running (after a crash, say), listens where the operator last chose, not on defaults."""
        saved = {k: getattr(self, k) for k in _REMEMBERED}
        write_atomic(self.serve_file, json.dumps(saved, indent=2))

    @classmethod
    def remembered(cls, paths: Paths) -> DaemonConfig:
        """The configuration ``zlayer serve`` was last started with for ``paths``' data dir; without one, a daemon
        on its unix socket only (no TCP listener, no metrics). A value of the wrong type is left at that."""
        try:
            saved = json.loads((paths.data_dir / SERVE_FILE).read_text())
        except (OSError, ValueError):
            saved = {}
        cfg = cls(paths=paths, bind=None)
        for key, kind in _REMEMBERED.items():
            value = saved.get(key) if isinstance(saved, dict) else None
            if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
                setattr(cfg, key, value)
        return cfg


SERVE_FILE = "serve.json"
# what `zlayer serve` chose that a daemon started on a user's behalf repeats, with the type each must have
_REMEMBERED: dict[str, type | tuple[type, ...]] = {
    "bind": str, "metrics_bind": str, "swagger": bool, "deployment_name": str, "host_network": bool, "dns_port": int,
    "acme_email": str, "acme_directory": str, "max_layer_size": str, "max_image_size": str,
    "heartbeat_interval": (int, float), "dead_after": (int, float), "wg_port": int,
    "overlay_peer_timeout": (int, float),
    "autoscale_interval": (int, float), "api_tls_cert": str, "api_tls_key": str,
    "api_tls_acme": str,
}  # fmt: skip


def split_bind(text: str, what: str = "--bind") -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) → (host, port); a clear usage error otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"{what} {text!r}: expected HOST:PORT, e.g. 0.0.0.0:{API_PORT}")
    return host.strip("[]") or "0.0.0.0", int(port)


def check_tls_pair(cert: str | None, key: str | None) -> None:
    """``--api-tls-cert`` and ``--api-tls-key``: both or neither, and a certificate chain and its private key that
    belong together (a clear error naming the file, not a listener that fails its first handshake)."""
    if (cert is None) != (key is None):
        raise UsageError("--api-tls-cert and --api-tls-key go together", where="--api-tls-key" if cert else
                         "--api-tls-cert")  # fmt: skip
    if cert is None or key is None:
        return
    import ssl

    for path, flag in ((cert, "--api-tls-cert"), (key, "--api-tls-key")):
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise UsageError(f"{path}: no readable file", where=flag)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as e:
        raise UsageError(f"{cert} with {key}: not a PEM certificate chain and its private key ({e})",
                         where="--api-tls-cert") from None  # fmt: skip


_NAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]")


def check_acme_domain(domain: str) -> str:
    """``--api-tls-acme``'s DOMAIN: a DNS name (lower-cased), which HTTP-01 can prove; else a usage error."""
    name = domain.strip().lower().rstrip(".")
    if "*" in name:
        raise UsageError(f"--api-tls-acme {domain!r}: HTTP-01 cannot prove a wildcard name; name the API's host",
                         where="--api-tls-acme")  # fmt: skip
    if not _NAME.fullmatch(name):
        raise UsageError(f"--api-tls-acme {domain!r}: expected the DNS name clients reach the API by, "
                         "e.g. api.example.com", where="--api-tls-acme")  # fmt: skip
    return name


def write_json_atomic(path: Path, data: dict[str, object]) -> None:
    write_atomic(path, json.dumps(data, indent=2))


def probe_socket(path: Path) -> bool:
    """True when something accepts connections on the unix socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(0.5)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()
