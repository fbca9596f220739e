"""Resource detection reads the PCI devices of a sysfs tree and nvidia-smi's CSV as a GPU node shows them.

This machine has no GPU, so the tree is made here in sysfs' own layout (``bus/pci/devices/*`` are links into
``devices/pci0000:00/``) and nvidia-smi is a script printing what the real one prints for the same query.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from zlayer.cluster.resources import (
    NVIDIA_QUERY,
    detect_gpus,
    detect_platform,
    detect_resources,
    disk_bytes,
    pci_address,
)
from zlayer.cluster.view import Gpu

# (address, vendor, device, class, extra files)
DEVICES: list[tuple[str, str, str, str, dict[str, str]]] = [
    ("0000:00:02.0", "0x8086", "0x4680", "0x030000", {}),  # Intel UHD 770 (iGPU)
    ("0000:00:1f.6", "0x8086", "0x1a1c", "0x020000", {}),  # Intel Ethernet: not a display controller
    ("0000:02:00.0", "0x1a03", "0x2000", "0x030000", {}),  # ASPEED BMC VGA: not a GPU that runs workloads
    (
        "0000:03:00.0",
        "0x1002",
        "0x744c",
        "0x030000",
        {"product_name": "Radeon RX 7900 XTX", "mem_info_vram_total": "25753026560"},
    ),
    ("0000:07:00.0", "0x10de", "0x20b2", "0x030200", {}),  # A100 80GB (3D controller)
    ("0000:07:00.1", "0x10de", "0x1aef", "0x040300", {}),  # its HDMI audio function: not a GPU
    ("0001:4b:00.0", "0x10de", "0x20b2", "0x030200", {}),  # a second A100, in PCI domain 1
]

NVIDIA_SMI_CSV = """0, 00000000:07:00.0, NVIDIA A100-SXM4-80GB, 81920
1, 00000001:4B:00.0, NVIDIA A100-SXM4-80GB, 81920
"""


def make_sysfs(root: Path, devices: list[tuple[str, str, str, str, dict[str, str]]] = DEVICES) -> Path:
    (root / "bus" / "pci" / "devices").mkdir(parents=True)
    for address, vendor, device, klass, extra in devices:
        real = root / "devices" / "pci0000:00" / address
        real.mkdir(parents=True)
        for name, value in {"vendor": vendor, "device": device, "class": klass, **extra}.items():
            (real / name).write_text(value + "\n")
        (root / "bus" / "pci" / "devices" / address).symlink_to(f"../../../devices/pci0000:00/{address}")
    return root


def script(path: Path, body: str) -> list[str]:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return [str(path)]


def fake_nvidia_smi(tmp_path: Path, csv: str = NVIDIA_SMI_CSV) -> list[str]:
    (tmp_path / "out.csv").write_text(csv)
    args = " ".join(NVIDIA_QUERY)
    # Answers only the query detection makes, as nvidia-smi would: anything else is an error.
    return script(
        tmp_path / "nvidia-smi",
        f'[ "$*" = "{args}" ] || {{ echo "bad args: $*" >&2; exit 2; }}\ncat {tmp_path / "out.csv"}\n',
    )


def test_gpus_of_the_three_vendors_with_nvidia_smi(tmp_path: Path) -> None:
    gpus = detect_gpus(make_sysfs(tmp_path / "sys"), fake_nvidia_smi(tmp_path))
    assert gpus == (
        Gpu(index=0, vendor="intel", model="Intel [8086:4680]", memory_mb=0, pci_address="0000:00:02.0"),
        Gpu(index=0, vendor="amd", model="Radeon RX 7900 XTX", memory_mb=24560, pci_address="0000:03:00.0"),
        Gpu(index=0, vendor="nvidia", model="NVIDIA A100-SXM4-80GB", memory_mb=81920, pci_address="0000:07:00.0"),
        Gpu(index=1, vendor="nvidia", model="NVIDIA A100-SXM4-80GB", memory_mb=81920, pci_address="0001:4b:00.0"),
    )


def test_nvidia_without_nvidia_smi_still_counts_its_gpus(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sysfs = make_sysfs(tmp_path / "sys")
    for smi in (None, [str(tmp_path / "no-such-nvidia-smi")]):
        gpus = [g for g in detect_gpus(sysfs, smi) if g.vendor == "nvidia"]
        assert [(g.index, g.model, g.memory_mb) for g in gpus] == [
            (0, "NVIDIA [10de:20b2]", 0),
            (1, "NVIDIA [10de:20b2]", 0),
        ]
    # A driver that answers with an error is said in one line; the GPUs are still there.
    failing = script(
        tmp_path / "smi-fails", "echo 'NVIDIA-SMI has failed because it couldn'\"'\"'t communicate' >&2\nexit 9\n"
    )
    with caplog.at_level(logging.WARNING, logger="zlayer.cluster"):
        assert len([g for g in detect_gpus(sysfs, failing) if g.vendor == "nvidia"]) == 2
    assert "nvidia-smi exited 9 (NVIDIA-SMI has failed" in caplog.text


def test_bad_nvidia_smi_lines_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    csv = "garbage\n0, 00000000:07:00.0, NVIDIA H100 80GB HBM3, 81559\nx, 00000001:4B:00.0, NVIDIA A100, 1\n"
    with caplog.at_level(logging.WARNING, logger="zlayer.cluster"):
        gpus = detect_gpus(make_sysfs(tmp_path / "sys"), fake_nvidia_smi(tmp_path, csv))
    nvidia = [(g.model, g.memory_mb) for g in gpus if g.vendor == "nvidia"]
    assert nvidia == [("NVIDIA H100 80GB HBM3", 81559), ("NVIDIA [10de:20b2]", 0)]
    assert "nvidia-smi line 1" in caplog.text and "nvidia-smi line 3" in caplog.text


def test_no_pci_tree_means_no_gpus(tmp_path: Path) -> None:
    assert detect_gpus(tmp_path / "empty", None) == ()
    # this machine's real sysfs: whatever it holds, detection does not fail on it
    assert all(g.vendor in ("nvidia", "amd", "intel") for g in detect_gpus())


def test_node_resources(tmp_path: Path) -> None:
    r = detect_resources(tmp_path / "data" / "not-yet-made", make_sysfs(tmp_path / "sys"), fake_nvidia_smi(tmp_path))
    st = os.statvfs(tmp_path)
    assert r.cpu_cores == os.cpu_count()
    assert r.memory_bytes == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert r.disk_bytes == st.f_blocks * st.f_frsize == disk_bytes(tmp_path)
    assert [g.vendor for g in r.gpus] == ["intel", "amd", "nvidia", "nvidia"]


def test_pci_address_forms() -> None:
    assert pci_address("00000000:07:00.0") == "0000:07:00.0"
    assert pci_address("00000001:4B:00.0") == "0001:4b:00.0"
    assert pci_address("0000:07:00.0") == "0000:07:00.0"


def test_platform_in_the_specs_words() -> None:
    want = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine)
    assert detect_platform() == ("linux", want)
