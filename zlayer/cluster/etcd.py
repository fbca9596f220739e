"""The node's etcd: Debian's ``etcd`` binary run as a child of the daemon, as k3s embeds its datastore.

Its data dir is ``DATA/cluster/etcd`` (0700, the daemon's alone); its peer URL is the node's advertise address at the
raft port (``--raft-port``, 9000 as ZLayer's), its client URL the advertise address (and loopback) at the client
port. In a cluster both are ``https://`` with mutual TLS (:mod:`zlayer.cluster.pki`): etcd serves only a client or
peer that presents a certificate of the cluster's CA not on its revocation list; a member without ``tls`` (plain
HTTP) is only a test's lone etcd on loopback.
The child dies with the daemon (``PR_SET_PDEATHSIG``): a daemon killed with -9 leaves no etcd holding the
ports, and the next daemon starts its own on the same data dir. A daemon that stops cleanly stops etcd with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from zlayer.cluster.pki import NodeTLS
from zlayer.errors import DaemonError
from zlayer.paths import private_dir
from zlayer.state.etcd import EtcdClient, EtcdError

log = logging.getLogger("zlayer.cluster.etcd")

ETCD_BINARY = os.environ.get("ZLAYER_ETCD", "etcd")
# etcd keeps the raft entries since its last snapshot in memory and snapshots every --snapshot-count entries: 100000
# by default, so a long-lived cluster (each deploy, placement and status change is an entry; a node at rest writes
# none) could hold a log of that many in every member. 10000 bounds it (etcd 3.6's default); a follower that falls
# further behind is sent a snapshot instead of entries, as one past the default already was.
SNAPSHOT_COUNT = 10000
# Go collects when the heap has grown GOGC% over what survived the last collection (100: it doubles); 50 holds a member
# at rest about 10 MiB smaller (perf/cluster_deploy.py), for a little more collection on a store that is mostly idle.
# No GOMEMLIMIT: a fixed cap below a large cluster's live heap would make Go collect without end. The operator's own
# GOGC (or GOMEMLIMIT) in the daemon's environment wins.
GO_ENV = {"GOGC": "50"}
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child, before exec: SIGKILL when the daemon (the thread that forked it) goes away."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setpgid(0, 0)  # its own process group: a terminal's Ctrl+C reaches the daemon, which stops etcd in order


def url(host: str, port: int, tls: bool = True) -> str:
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def same_endpoint(a: str, b: str) -> bool:
    """Two URLs name the same host and port (whatever their scheme)."""
    return a.split("://", 1)[-1].rstrip("/") == b.split("://", 1)[-1].rstrip("/")


@dataclass
class EtcdMember:
    """How this node's etcd member runs (kept in the node's cluster config)."""

    name: str
    advertise: str
    peer_port: int = 9000
    client_port: int = 2379
    tls: NodeTLS | None = None  # None: plain HTTP (a test's lone etcd on loopback; never a cluster's member)

    @property
    def peer_url(self) -> str:
        return url(self.advertise, self.peer_port, self.tls is not None)

    @property
    def client_url(self) -> str:
        return url(self.advertise, self.client_port, self.tls is not None)

    @property
    def local_client_url(self) -> str:
        """The client URL the node's own daemon uses (loopback)."""
        host = "127.0.0.1" if self.advertise != "127.0.0.1" else self.advertise
        return url(host, self.client_port, self.tls is not None)

    def client(self, timeout: float = 5.0) -> EtcdClient:
        """A client of this member (presenting the node's certificate when it runs with TLS)."""
        return EtcdClient([self.local_client_url], timeout=timeout,
                          ssl=self.tls.client_context() if self.tls is not None else None)  # fmt: skip


class EtcdProcess:
    """One etcd member under ``directory`` (``DATA/cluster``): started, waited for, stopped."""

    def __init__(self, directory: Path, member: EtcdMember, log_file: Path) -> None:
        self.directory = directory
        self.data_dir = directory / "etcd"
        self.member = member
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.directory / "etcd.pid"

    def has_data(self) -> bool:
        return (self.data_dir / "member").is_dir()

    def wipe(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _argv(self, initial_cluster: str, state: str, token: str, force_new: bool) -> list[str]:
        m = self.member
        clients = [m.client_url] + ([m.local_client_url] if m.advertise != "127.0.0.1" else [])
        argv = [ETCD_BINARY, "--name", m.name, "--data-dir", str(self.data_dir),
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--listen-client-urls", ",".join(clients), "--advertise-client-urls", m.client_url,
                "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", token, "--max-txn-ops", "1024", "--max-request-bytes", str(8 << 20),
                "--auto-compaction-mode", "revision", "--auto-compaction-retention", "10000",
                "--heartbeat-interval", "100", "--election-timeout", "1000", "--snapshot-count", str(SNAPSHOT_COUNT),
                "--logger", "zap",
                "--log-level", "warn" if m.tls is None else "error"]  # fmt: skip
        # error with TLS: etcd 3.4 warns on every request through its JSON gateway that the gateway's certificate
        # (the member's own) has a common name it ignores — one log line per request of the daemon
        if m.tls is not None:
            t = m.tls
            argv += ["--cert-file", str(t.cert), "--key-file", str(t.key), "--trusted-ca-file", str(t.ca),
                     "--client-cert-auth", "--client-crl-file", str(t.crl),
                     "--peer-cert-file", str(t.cert), "--peer-key-file", str(t.key),
                     "--peer-trusted-ca-file", str(t.ca), "--peer-client-cert-auth",
                     "--peer-crl-file", str(t.crl)]  # fmt: skip
        if force_new:
            argv.append("--force-new-cluster")
        return argv

    def _reap_stale(self) -> None:
        """An etcd left on this data dir (a daemon that died while PR_SET_PDEATHSIG could not act) is ended."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return
        if str(self.data_dir).encode() in cmdline:
            log.warning("etcd: ending the etcd (pid %d) a previous daemon left on %s", pid, self.data_dir)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.02)

    async def start(
        self, initial_cluster: str, state: str = "new", token: str = "zlayer", force_new: bool = False,
        timeout: float = 30.0,
    ) -> EtcdClient:  # fmt: skip
        """Start the member and return a client of it once it answers (its raft has a leader, or it is a learner
        catching up). ``initial_cluster``/``state``/``token`` matter only on a fresh data dir."""
        if shutil.which(ETCD_BINARY) is None:
            raise DaemonError(f"no etcd binary ({ETCD_BINARY}) on this node", hint="apt-get install etcd-server")
        private_dir(self.directory)
        private_dir(self.data_dir)
        self._reap_stale()
        argv = self._argv(initial_cluster, state, token, force_new)
        fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # forked from the loop's thread (not a worker thread): PR_SET_PDEATHSIG follows the forking thread
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, close_fds=True,
                                         env={**GO_ENV, **os.environ}, preexec_fn=_die_with_parent)  # fmt: skip
        finally:
            os.close(fd)
        self.pid_file.write_text(str(self.proc.pid))
        if self.member.tls is not None and not self.member.tls.exists():
            raise DaemonError(f"this node's TLS files are missing from {self.member.tls.directory}",
                              hint="the node cannot take part in its cluster without them: remove it from the "
                                   "cluster and join it again")  # fmt: skip
        client = self.member.client(timeout=2.0)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                await client.close()
                raise DaemonError(f"etcd exited with code {self.proc.returncode}: {last_line(self.log_file)}",
                                  where=str(self.log_file))  # fmt: skip
            try:
                st = await client.status(timeout=1.0)
                if int(st.get("leader") or 0) or st.get("isLearner"):
                    client.timeout = 5.0
                    return client
            except EtcdError as e:
                last = e.message
            await asyncio.sleep(0.1)
        await client.close()
        await self.stop()
        raise DaemonError(f"etcd did not become ready within {timeout:g}s ({last})", where=str(self.log_file))

    async def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            await asyncio.sleep(0.05)
            proc.wait()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def last_line(path: Path) -> str:
    """The last line etcd logged (its reason, when it exits)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][-300:] if lines else ""


__all__ = ["EtcdMember", "EtcdProcess", "last_line", "url"]
