"""What this node has to give: CPU cores, memory, the disk of its data dir, and its GPUs.

GPUs are the PCI display controllers (class 0x03xxxx) of the three vendors that run workloads — NVIDIA, AMD and
Intel — read from sysfs (``/sys/bus/pci/devices/*/{vendor,device,class}``); a BMC's or a VM's VGA (ASPEED, Matrox,
QEMU, virtio) is not one. For NVIDIA the model and memory come from ``nvidia-smi`` where it exists (matched to the
sysfs device by PCI address); AMD's from the amdgpu driver's ``product_name`` and ``mem_info_vram_total``. Where
nothing names the model it is ``<Vendor> [vvvv:dddd]``, the PCI ids, so a spec's ``gpu.model`` can still match it.

The sysfs root and the ``nvidia-smi`` command are parameters, so a test points them at a tree and a script it made.
Detection reads files and runs one short command: call it off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

from zlayer.cluster.view import Gpu, GpuVendor, NodeResources

log = logging.getLogger("zlayer.cluster")

PCI_VENDORS: dict[int, GpuVendor] = {0x10DE: "nvidia", 0x1002: "amd", 0x8086: "intel"}
_VENDOR_NAMES: dict[GpuVendor, str] = {"nvidia": "NVIDIA", "amd": "AMD", "intel": "Intel", "unknown": "GPU"}
DISPLAY_CLASS = 0x03  # PCI base class "display controller": VGA (0x0300), XGA, 3D (0x0302), other (0x0380)
NVIDIA_SMI: tuple[str, ...] = ("nvidia-smi",)
NVIDIA_QUERY = ("--query-gpu=index,pci.bus_id,name,memory.total", "--format=csv,noheader,nounits")
NVIDIA_SMI_TIMEOUT = 10.0


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _hex(text: str | None) -> int | None:
    try:
        return None if text is None else int(text, 16)
    except ValueError:
        return None


def pci_address(text: str) -> str:
    """A PCI address in sysfs' form (``0000:07:00.0``): nvidia-smi writes the domain with 8 digits
    (``00000000:07:00.0``) and in upper case."""
    text = text.strip().lower()
    domain, sep, rest = text.partition(":")
    if not sep or rest.count(":") != 1:
        return text
    return f"{int(domain, 16):04x}:{rest}" if all(c in "0123456789abcdef" for c in domain) and domain else text


def _nvidia_smi(command: Sequence[str]) -> dict[str, tuple[int, str, int]]:
    """nvidia-smi's GPUs by PCI address: (index, model, memory in MiB). Empty when it is missing or fails."""
    try:
        out = subprocess.run(
            [*command, *NVIDIA_QUERY], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        if not isinstance(e, FileNotFoundError):
            log.warning("nvidia-smi did not answer (%s): NVIDIA GPUs are shown without model and memory", e)
        return {}
    if out.returncode != 0:
        log.warning(
            "nvidia-smi exited %d (%s): NVIDIA GPUs are shown without model and memory",
            out.returncode,
            out.stderr.strip()[:200] or "no message",
        )
        return {}
    found: dict[str, tuple[int, str, int]] = {}
    for n, line in enumerate(out.stdout.splitlines(), 1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) < 4:
                raise ValueError(line)
            index, bus_id, name, memory = int(fields[0]), fields[1], ",".join(fields[2:-1]).strip(), fields[-1]
            memory_mb = int(float(memory)) if memory not in ("", "[N/A]", "N/A") else 0
        except ValueError:
            log.warning("nvidia-smi line %d is not index,pci.bus_id,name,memory.total: %r", n, line[:200])
            continue
        found[pci_address(bus_id)] = (index, name, max(memory_mb, 0))
    return found


def detect_gpus(sysfs: Path = Path("/sys"), nvidia_smi: Sequence[str] | None = NVIDIA_SMI) -> tuple[Gpu, ...]:
    """The node's GPUs in PCI order. ``index`` counts per vendor (NVIDIA's is nvidia-smi's own index), as each
    vendor's device files do (``/dev/nvidia0``); ``nvidia_smi=None`` does not run it."""
    devices = sysfs / "bus" / "pci" / "devices"
    try:
        entries = sorted(devices.iterdir(), key=lambda p: p.name)
    except OSError:
        return ()
    seen: list[tuple[str, int, int, Path]] = []
    for dev in entries:
        klass = _hex(_read(dev / "class"))
        vendor_id = _hex(_read(dev / "vendor"))
        if klass is None or vendor_id is None or klass >> 16 != DISPLAY_CLASS or vendor_id not in PCI_VENDORS:
            continue
        seen.append((dev.name.lower(), vendor_id, _hex(_read(dev / "device")) or 0, dev))
    smi = _nvidia_smi(nvidia_smi) if nvidia_smi and any(PCI_VENDORS[v] == "nvidia" for _, v, _, _ in seen) else {}
    counts: dict[str, int] = {}
    gpus: list[Gpu] = []
    for address, vendor_id, device_id, dev in seen:
        vendor = PCI_VENDORS[vendor_id]
        index = counts.get(vendor, 0)
        counts[vendor] = index + 1
        model = f"{_VENDOR_NAMES[vendor]} [{vendor_id:04x}:{device_id:04x}]"
        memory_mb = 0
        if vendor == "nvidia" and address in smi:
            index, name, memory_mb = smi[address]
            model = name or model
        elif vendor == "amd":
            model = _read(dev / "product_name") or model
            vram = _hex_or_int(_read(dev / "mem_info_vram_total"))
            memory_mb = vram // (1 << 20) if vram else 0
        gpus.append(Gpu(index=index, vendor=vendor, model=model, memory_mb=memory_mb, pci_address=address))
    return tuple(gpus)


def _hex_or_int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text, 0)
    except ValueError:
        return None


def memory_bytes() -> int:
    """The node's physical memory."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def disk_bytes(path: Path) -> int:
    """The size of the filesystem that holds ``path`` (the data dir), or of its nearest existing parent."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_blocks * st.f_frsize


_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def detect_platform() -> tuple[str, str | None]:
    """(os, arch) in the spec's words (``platform: {os: linux, arch: amd64}``); arch None where the spec has no name
    for it (placement then treats the node as able to run any platform's services, as ZLayer does)."""
    return "linux", _ARCHES.get(platform.machine().lower())


def detect_resources(
    data_dir: Path, sysfs: Path = Path("/sys"), nvidia_smi: Sequence[str] | None = NVIDIA_SMI
) -> NodeResources:
    """This node's resources: every online CPU, physical memory, the data dir's filesystem, and its GPUs."""
    return NodeResources(
        cpu_cores=float(os.cpu_count() or 1),
        memory_bytes=memory_bytes(),
        disk_bytes=disk_bytes(data_dir),
        gpus=detect_gpus(sysfs, nvidia_smi),
    )


__all__ = [
    "NVIDIA_SMI",
    "PCI_VENDORS",
    "detect_gpus",
    "detect_platform",
    "detect_resources",
    "disk_bytes",
    "memory_bytes",
    "pci_address",
]
