"""``zlayer daemon``: run ``zlayer serve`` as this host's system service (systemd), and start, stop or inspect it.

Where systemd is the init system, the commands go through ``systemctl``. Where it is not (a container, WSL, a chroot)
``install`` still writes the unit (it takes effect at the next boot under systemd) and ``start``/``stop``/``restart``
run the daemon detached, as ``zlayer serve --daemon`` does, so the same commands work on every Linux host."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from zlayer.cli.common import cli_ctx, output_option, print_data, warn_if_secret_in_argv
from zlayer.errors import DaemonError, UsageError
from zlayer.hostservice import SYSTEM_UNIT_DIR, UNIT_NAME, ServiceOptions, systemd_environment_dropin, systemd_unit
from zlayer.paths import API_PORT, write_atomic

STOP_TIMEOUT_S = 30.0


def _systemd_running() -> bool:
    """sd_booted(): systemd is PID 1 exactly when /run/systemd/system exists."""
    return Path("/run/systemd/system").is_dir() and os.environ.get("ZLAYER_NO_SYSTEMD") != "1"


def _command() -> tuple[str, ...]:
    """The ``zlayer`` the service runs: the console script beside this interpreter, else ``python -m zlayer``."""
    script = Path(sys.executable).parent / "zlayer"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (sys.executable, "-m", "zlayer")


def _unit_dir(given: str | None) -> Path:
    return Path(given) if given else SYSTEM_UNIT_DIR


def _systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise DaemonError(f"systemctl {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}",
                          hint=f"see `journalctl -u {UNIT_NAME} -n 50`")  # fmt: skip
    return proc


def _info() -> dict[str, object]:
    path = cli_ctx().paths.data_dir / "daemon.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _managed(unit_dir: Path) -> bool:
    """systemd runs this host and knows our unit: start and stop go through it."""
    return _systemd_running() and (unit_dir / UNIT_NAME).is_file()


def _start_detached() -> None:
    """Start ``zlayer serve --daemon`` with the configuration last chosen for this data dir (``DATA/serve.json``)."""
    from zlayer.config import DaemonConfig, probe_socket

    paths = cli_ctx().paths
    if probe_socket(paths.socket):
        click.echo(f"zlayer daemon already running (pid {_info().get('pid', '?')}), socket {paths.socket}")
        return
    cfg = DaemonConfig.remembered(paths)
    cfg.chosen = True
    argv = [*_command(), *cfg.serve_argv(), "--daemon"]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DaemonError(f"the daemon did not start: {proc.stderr.strip()[-400:]}", hint=f"see {cfg.log_file}")
    click.echo(proc.stdout.strip())


def _stop_detached(timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM the daemon named in ``DATA/daemon.json`` and wait for it to go; False when none was running."""
    pid = int(str(_info().get("pid") or 0))
    if not _alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        hint = f"kill -9 {pid}; its containers keep running and are re-adopted at the next start"
        raise DaemonError(f"the daemon (pid {pid}) did not stop within {timeout:g}s of SIGTERM", hint=hint)
    return True


@click.group("daemon")
def daemon() -> None:
    """Install zlayer as a system service (systemd) and start, stop or inspect it."""


unit_dir_option = click.option(
    "--unit-dir",
    envvar="ZLAYER_UNIT_DIR",
    metavar="DIR",
    help=f"Where the systemd unit lives [default: {SYSTEM_UNIT_DIR}].",
)


@daemon.command("install")
@click.option("--no-start", is_flag=True, help="Install and enable the service without starting it.")
@click.option(
    "--bind", default=f"0.0.0.0:{API_PORT}", show_default=True, help="TCP address of the API; 'none' for none."
)
@click.option("--socket", "socket_path", help="Unix socket of the API [default: from the data dir].")
@click.option("--jwt-secret", envvar="ZLAYER_JWT_SECRET", help="Secret for bearer tokens (kept in a 0600 drop-in).")
@click.option("--no-swagger", is_flag=True, help="Do not serve the Swagger UI.")
@click.option("--metrics-bind", help="Serve Prometheus metrics on HOST:PORT.")
@unit_dir_option
def install(
    no_start: bool,
    bind: str,
    socket_path: str | None,
    jwt_secret: str | None,
    no_swagger: bool,
    metrics_bind: str | None,
    unit_dir: str | None,
) -> None:
    """Write the systemd unit for `zlayer serve`, enable it, and start it (unless --no-start).

    The unit is Type=notify (systemd waits for the API to answer), restarts the daemon on failure, and stops only
    the daemon: containers keep running and are re-adopted when it comes back."""
    from zlayer.config import split_bind

    if jwt_secret:
        warn_if_secret_in_argv("jwt_secret", "ZLAYER_JWT_SECRET")
    if bind.lower() not in ("none", "off", ""):
        split_bind(bind)
    if metrics_bind:
        split_bind(metrics_bind, "--metrics-bind")
    paths = cli_ctx().paths
    args = ["--bind", bind, "--socket", socket_path or str(paths.socket)]
    args += ["--metrics-bind", metrics_bind] if metrics_bind else []
    args += ["--no-swagger"] if no_swagger else []
    opts = ServiceOptions(
        command=_command(),
        data_dir=str(paths.data_dir),
        serve_args=tuple(args),
        environment={"ZLAYER_JWT_SECRET": jwt_secret} if jwt_secret else {},
    )
    where = _unit_dir(unit_dir)
    try:
        where.mkdir(parents=True, exist_ok=True)
        write_atomic(where / UNIT_NAME, systemd_unit(opts), mode=0o644)
        dropin = systemd_environment_dropin(opts)
        dropin_dir = where / f"{UNIT_NAME}.d"
        if dropin is not None:
            dropin_dir.mkdir(mode=0o755, exist_ok=True)
            write_atomic(dropin_dir / "env.conf", dropin, mode=0o600)
        else:
            (dropin_dir / "env.conf").unlink(missing_ok=True)
    except PermissionError as e:
        raise UsageError(f"cannot write {where / UNIT_NAME}: permission denied", hint="run as root") from e
    click.echo(f"Installed systemd unit: {where / UNIT_NAME}")
    if not _systemd_running():
        click.echo("systemd is not the init system here: the unit takes effect at the next boot under systemd.")
        if not no_start:
            _start_detached()
        return
    _systemctl("daemon-reload")
    _systemctl("enable", UNIT_NAME)
    if not no_start:
        _systemctl("start", UNIT_NAME)
        click.echo(f"Started {UNIT_NAME}; logs: journalctl -u {UNIT_NAME}; stop: zlayer daemon stop")


@daemon.command("uninstall")
@click.option("--purge-data", is_flag=True, help="Also delete the data dir (images, volumes, state). Irreversible.")
@unit_dir_option
def uninstall(purge_data: bool, unit_dir: str | None) -> None:
    """Stop and disable the service and remove its unit (the data dir stays unless --purge-data)."""
    where = _unit_dir(unit_dir)
    if _managed(where):
        _systemctl("disable", "--now", UNIT_NAME, check=False)
    else:
        _stop_detached()
    unit = where / UNIT_NAME
    removed = unit.is_file()
    unit.unlink(missing_ok=True)
    shutil.rmtree(where / f"{UNIT_NAME}.d", ignore_errors=True)
    if _systemd_running():
        _systemctl("daemon-reload", check=False)
    click.echo(f"Removed {unit}" if removed else f"No unit at {unit}")
    if purge_data:
        data_dir = cli_ctx().paths.data_dir
        shutil.rmtree(data_dir, ignore_errors=True)
        click.echo(f"Deleted {data_dir}")


@daemon.command("start")
@unit_dir_option
def start(unit_dir: str | None) -> None:
    """Start the daemon (through systemd when it manages it)."""
    if _managed(_unit_dir(unit_dir)):
        _systemctl("start", UNIT_NAME)
        click.echo(f"Started {UNIT_NAME}")
    else:
        _start_detached()


@daemon.command("stop")
@unit_dir_option
def stop(unit_dir: str | None) -> None:
    """Stop the daemon; its containers keep running and are re-adopted at the next start."""
    if _managed(_unit_dir(unit_dir)):
        _systemctl("stop", UNIT_NAME)
        click.echo(f"Stopped {UNIT_NAME}")
    elif _stop_detached():
        click.echo("zlayer daemon stopped")
    else:
        click.echo("zlayer daemon is not running")


@daemon.command("restart")
@unit_dir_option
def restart(unit_dir: str | None) -> None:
    """Stop the daemon if it runs, then start it."""
    if _managed(_unit_dir(unit_dir)):
        _systemctl("restart", UNIT_NAME)
        click.echo(f"Restarted {UNIT_NAME}")
        return
    _stop_detached()
    _start_detached()


@daemon.command("status")
@unit_dir_option
@output_option()
def status(unit_dir: str | None, output: str) -> None:
    """Whether the service is installed and the daemon runs (pid, socket, API); exit 1 when it does not run."""
    from zlayer.config import probe_socket

    paths = cli_ctx().paths
    unit = _unit_dir(unit_dir) / UNIT_NAME
    info = _info()
    pid = int(str(info.get("pid") or 0))
    running = probe_socket(paths.socket) and _alive(pid)
    state: dict[str, object] = {
        "installed": unit.is_file(),
        "unit": str(unit),
        "manager": "systemd" if _managed(_unit_dir(unit_dir)) else "none",
        "running": running,
        "pid": pid if running else None,
        "socket_path": str(paths.socket),
        "api_bind": info.get("api_bind") if running else None,
    }
    if state["manager"] == "systemd":
        state["active"] = _systemctl("is-active", UNIT_NAME, check=False).stdout.strip()
    if output != "table":
        print_data(state, output)
    else:
        click.echo(f"Service: {'installed at ' + str(unit) if state['installed'] else 'not installed'}"
                   + (f" (systemd: {state['active']})" if "active" in state else ""))  # fmt: skip
        if running:
            click.echo(f"Daemon: running (pid {pid}), socket {paths.socket}, api {state['api_bind'] or 'unix only'}")
        else:
            click.echo(f"Daemon: not running (socket {paths.socket})")
    sys.exit(0 if running else 1)


@daemon.command("reset")
@click.option("--force", is_flag=True, help="Really delete the node's cluster state (there is no prompt).")
def reset(force: bool) -> None:
    """Forget this node's cluster membership: delete DATA/cluster (its etcd member and node identity).

    The daemon must be stopped. At its next start the node is a single node again, with its own SQLite state; join
    it to a cluster anew with `zlayer node join`. Images, volumes and the single-node state are kept."""
    from zlayer.config import probe_socket

    paths = cli_ctx().paths
    cluster = paths.data_dir / "cluster"
    if probe_socket(paths.socket) or _alive(int(str(_info().get("pid") or 0))):
        raise UsageError("the daemon is running: stop it first (`zlayer daemon stop`)", where=str(paths.socket))
    if not force:
        raise UsageError(f"this deletes {cluster} (the node's cluster membership and identity)",
                         hint="pass --force to confirm")  # fmt: skip
    if not cluster.exists():
        click.echo(f"Nothing to reset: {cluster} does not exist")
        return
    shutil.rmtree(cluster)
    click.echo(f"Deleted {cluster}; the node starts as a single node next time")
