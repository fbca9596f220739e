"""Seccomp profiles: Docker's default (``seccomp_default.json``) and custom ones, turned into OCI ``linux.seccomp``.

Profiles are read in Docker's format (``defaultAction``, ``archMap``, ``syscalls[]`` with ``includes``/``excludes``
on capabilities, architectures and kernel version) or the OCI format (``architectures``); conditional rules are
resolved here for one container (its capabilities, this host's architecture and kernel), so what reaches the shim
is plain OCI that libseccomp compiles as it is.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from zlayer.errors import RuntimeFailure
from zlayer.limits import load_json

DEFAULT_PROFILE = Path(__file__).with_name("seccomp_default.json")

# Go's architecture names (used in profiles' "arches") and libseccomp's, for the machines zlayer runs on.
_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "x86", "i386": "x86", "armv7l": "arm",
            "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64", "mips64": "mips64"}  # fmt: skip
_SCMP_ARCH = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "x86": "SCMP_ARCH_X86",
              "arm": "SCMP_ARCH_ARM", "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
              "riscv64": "SCMP_ARCH_RISCV64", "mips64": "SCMP_ARCH_MIPS64"}  # fmt: skip


def host_arch() -> str:
    """This machine's architecture in Go's spelling (``amd64``, ``arm64`` ...)."""
    m = platform.machine()
    return _GO_ARCH.get(m, m)


def _kernel_version() -> tuple[int, ...]:
    rel = os.uname().release.split("-")[0]
    return tuple(int(p) for p in rel.split(".")[:2] if p.isdigit())


@cache
def default_profile() -> dict[str, Any]:
    """Docker's default profile, as stored (Docker format)."""
    data: dict[str, Any] = json.loads(DEFAULT_PROFILE.read_text())
    return data


def load_profile(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A custom profile file (Docker or OCI format); errors name the file and what is wrong."""
    p = Path(path)
    try:
        data = load_json(p.read_bytes(), where=f"seccomp profile {p}", error=RuntimeFailure)
    except OSError as exc:
        raise RuntimeFailure(f"seccomp profile {p}: cannot read it: {exc.strerror}") from None
    if not isinstance(data, dict) or "defaultAction" not in data:
        raise RuntimeFailure(f"seccomp profile {p}: missing defaultAction (is it a seccomp profile?)")
    if not isinstance(data.get("syscalls", []), list):
        raise RuntimeFailure(f"seccomp profile {p}: syscalls must be a list")
    return data


def _applies(rule: dict[str, Any], caps: set[str], arch: str, kernel: tuple[int, ...]) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("caps") and not all(c in caps for c in inc["caps"]):
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("minKernel"):
        want = tuple(int(p) for p in str(inc["minKernel"]).split(".")[:2])
        if kernel < want:
            return False
    if exc.get("caps") and any(c in caps for c in exc["caps"]):
        return False
    return not (exc.get("arches") and arch in exc["arches"])


def to_oci(profile: dict[str, Any], caps: Iterable[str], *, arch: str | None = None) -> dict[str, Any]:
    """Resolve ``profile`` for a container holding ``caps`` (``CAP_*`` names) into OCI ``linux.seccomp``."""
    arch = arch or host_arch()
    capset = set(caps)
    kernel = _kernel_version()
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    if "defaultErrnoRet" in profile:
        out["defaultErrnoRet"] = int(profile["defaultErrnoRet"])
    native = _SCMP_ARCH.get(arch)
    if profile.get("architectures"):
        out["architectures"] = list(profile["architectures"])
    elif profile.get("archMap") and native:
        for entry in profile["archMap"]:
            if entry.get("architecture") == native:
                out["architectures"] = [native, *(entry.get("subArchitectures") or [])]
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    syscalls = []
    for i, rule in enumerate(profile.get("syscalls") or []):
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or "action" not in rule:
            raise RuntimeFailure(f"seccomp profile: syscalls[{i}] needs names and an action")
        if not _applies(rule, capset, arch, kernel):
            continue
        item: dict[str, Any] = {"names": list(names), "action": rule["action"]}
        if rule.get("args"):
            item["args"] = [
                {k: a[k] for k in ("index", "value", "valueTwo", "op") if k in a and a[k] is not None}
                for a in rule["args"]
            ]
        if rule.get("errnoRet") is not None:
            item["errnoRet"] = int(rule["errnoRet"])
        syscalls.append(item)
    out["syscalls"] = syscalls
    return out
