"""How ``zlayer serve`` runs as the host's system service: the systemd unit (Linux), the launchd property list
(macOS) and the Windows service definition, each made from one :class:`ServiceOptions`.

Pure text: ``zlayer daemon install`` writes what these return, the packages ship the unit made here (so the unit in a
``.deb`` and the one ``daemon install`` writes cannot drift apart), and the tests check them without a service manager.
Names are ZLayer's: unit ``zlayer.service``, launchd label ``com.zlayer.daemon``, Windows service ``zlayer``."""

from __future__ import annotations

import plistlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path

UNIT_NAME = "zlayer.service"
LAUNCHD_LABEL = "com.zlayer.daemon"
WINDOWS_SERVICE = "zlayer"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
LAUNCHD_DIR = Path("/Library/LaunchDaemons")
LOG_DIR = Path("/var/log/zlayer")


@dataclass(frozen=True)
class ServiceOptions:
    """What the service runs: the ``zlayer`` command (its console script, or ``python -m zlayer``) and the options
    ``serve`` gets.

    ``environment`` holds what must not show in ``ps`` (the JWT secret): the unit keeps it in a 0600 drop-in, the
    plist and the Windows service in their own environment blocks, never on the command line."""

    command: tuple[str, ...]
    data_dir: str | None = None
    serve_args: tuple[str, ...] = ()
    environment: dict[str, str] = field(default_factory=dict)
    description: str = "zlayer node daemon (containers, proxy, API)"

    def argv(self) -> list[str]:
        """The command line: global options come before ``serve``, as the CLI parses them."""
        head = [*self.command, *(["--data-dir", self.data_dir] if self.data_dir else [])]
        return [*head, "serve", *self.serve_args]


def systemd_unit(opts: ServiceOptions) -> str:
    """A ``Type=notify`` unit: systemd counts the daemon started when it says READY (its API answers), restarts it
    when it fails or its watchdog pings stop, and stops only the daemon on stop or restart (``KillMode=process``):
    containers live on under their zlayer-shim, in the cgroups ``Delegate=yes`` hands the daemon, and are re-adopted."""
    return f"""[Unit]
Description={opts.description}
Documentation=https://github.com/BlackLeafDigital/ZLayer
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
EnvironmentFile=-/etc/zlayer/zlayer.env
ExecStart={shlex.join(opts.argv())}
Restart=on-failure
RestartSec=5s
RestartForceExitStatus=75
WatchdogSec=60s
TimeoutStartSec=120s
TimeoutStopSec=60s
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
LogsDirectory=zlayer
LogsDirectoryMode=0700
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def systemd_environment_dropin(opts: ServiceOptions) -> str | None:
    """The unit's drop-in (``zlayer.service.d/env.conf``, mode 0600) with the secrets, or None when there are none."""
    if not opts.environment:
        return None
    lines = [f'Environment="{k}={_systemd_quote(v)}"' for k, v in sorted(opts.environment.items())]
    return "[Service]\n" + "\n".join(lines) + "\n"


def _systemd_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")


def launchd_plist(opts: ServiceOptions) -> bytes:
    """The launchd job (``/Library/LaunchDaemons/com.zlayer.daemon.plist``): kept alive, started at load, logging
    to ``/var/log/zlayer/daemon.log``."""
    job: dict[str, object] = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": opts.argv(),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "StandardOutPath": str(LOG_DIR / "daemon.log"),
        "StandardErrorPath": str(LOG_DIR / "daemon.log"),
        "WorkingDirectory": "/",
        "Umask": 0o077,
        "SoftResourceLimits": {"NumberOfFiles": 1048576},
    }
    if opts.environment:
        job["EnvironmentVariables"] = dict(sorted(opts.environment.items()))
    return plistlib.dumps(job, sort_keys=False)


def windows_service(opts: ServiceOptions) -> dict[str, object]:
    """The Windows service as the Service Control Manager registers it (what ``sc.exe create`` and the MSI's
    ServiceInstall table say): automatic start, LocalSystem, restarted by the SCM after a failure. ``serve
    --service`` is ZLayer's hidden flag by which the daemon talks to the SCM."""
    argv = [*opts.argv(), "--service"]
    return {
        "name": WINDOWS_SERVICE,
        "display_name": "ZLayer Daemon",
        "description": opts.description,
        "binary_path": _windows_command_line(argv),
        "start_type": "auto",
        "account": "LocalSystem",
        "failure_actions": [{"action": "restart", "delay_ms": 5000}] * 3,
        "failure_reset_s": 86400,
        "environment": dict(sorted(opts.environment.items())),
    }


def _windows_command_line(argv: list[str]) -> str:
    """Quote as CommandLineToArgvW reads it back: arguments with spaces or quotes in double quotes."""
    out = []
    for arg in argv:
        if arg and not any(c in arg for c in ' \t"'):
            out.append(arg)
            continue
        quoted, slashes = '"', 0
        for c in arg:
            if c == "\\":
                slashes += 1
                continue
            quoted += "\\" * (slashes * 2 + 1 if c == '"' else slashes) + c
            slashes = 0
        out.append(quoted + "\\" * (slashes * 2) + '"')
    return " ".join(out)


__all__ = [
    "LAUNCHD_DIR",
    "LAUNCHD_LABEL",
    "SYSTEM_UNIT_DIR",
    "UNIT_NAME",
    "WINDOWS_SERVICE",
    "ServiceOptions",
    "launchd_plist",
    "systemd_environment_dropin",
    "systemd_unit",
    "windows_service",
]
