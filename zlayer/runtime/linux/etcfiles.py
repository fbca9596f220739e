"""The generated ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf`` of a container.

They are written into the bundle directory and bind-mounted over the image's files (as Docker does), so the image
layers are never changed and a read-only rootfs still gets them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from zlayer.errors import RuntimeFailure

HOST_RESOLV_CONF = Path("/etc/resolv.conf")


def _atomic_write(path: Path, text: str) -> None:
    # No fsync: these files live in the bundle, as long as the container (see backend._atomic_json).
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def hosts_text(hostname: str, ip: str | None, extra_hosts: Iterable[str], gateway: str | None = None) -> str:
    """Docker's /etc/hosts: loopback names, the container's own name on its IP, then ``extra_hosts`` (``host:ip``,
    ``host-gateway`` meaning ``gateway``)."""
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    for i, item in enumerate(extra_hosts):  # their form was checked with the spec (zlayer.spec.container)
        name, _, addr = item.partition(":")
        if addr == "host-gateway":
            if not gateway:
                raise RuntimeFailure(f"extra_hosts[{i}] {item!r}: host-gateway is unknown for this container's network")
            addr = gateway
        lines.append(f"{addr.strip('[]')}\t{name}")
    lines.append(f"{ip or '127.0.1.1'}\t{hostname}")
    return "\n".join(lines) + "\n"


def resolv_conf_text(dns: Sequence[str], *, host_network: bool, host_file: Path = HOST_RESOLV_CONF) -> str:
    """``dns`` servers when given (ZLayer's form: one ``nameserver`` each, then ``options edns0``); else the host's
    file, minus loopback resolvers when the container has its own network (they would point at itself)."""
    if dns:
        return "".join(f"nameserver {s}\n" for s in dns) + "options edns0\n"
    try:
        text = host_file.read_text()
    except OSError:
        return ""
    if host_network:
        return text
    out = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                if ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
        out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def write_etc_files(
    bundle: Path,
    *,
    hostname: str,
    ip: str | None = None,
    extra_hosts: Iterable[str] = (),
    dns: Sequence[str] = (),
    host_network: bool = False,
    gateway: str | None = None,
) -> list[dict[str, Any]]:
    """Write the three files under ``bundle/etc/`` and return the OCI bind mounts placing them in the container."""
    etc = bundle / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    files = {
        "hosts": hosts_text(hostname, ip, extra_hosts, gateway),
        "hostname": hostname + "\n",
        "resolv.conf": resolv_conf_text(dns, host_network=host_network),
    }
    mounts = []
    for name, text in files.items():
        _atomic_write(etc / name, text)
        mounts.append(
            {
                "destination": f"/etc/{name}",
                "type": "bind",
                "source": str(etc / name),
                "options": ["rbind", "rprivate", "nosuid", "nodev", "noexec"],
            }
        )
    return mounts
