"""Container start: create + start + wait of /bin/true from one busybox OCI bundle, zlayer vs runc vs crun, and the
bare-syscall floor (`unshare --fork --pid --mount --uts --ipc --net chroot ROOTFS /bin/true`).

The bundle is `runc spec` with Docker's defaults (the 14 default capabilities, the default seccomp profile,
no_new_privs), the same for every runtime. zlayer is timed as `zlayer-shim run` (one exec, like `runc run`); the
Python API path (shim.create + start + wait + delete from asyncio) is reported too. Also: the resident memory of
the idle per-container monitor, and 100 containers created and started back to back through the Python API.
crun 1.8 refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported"): that is recorded, not fatal.
Prints one JSON object on its last line (median_vs_runc target <= 0.3, median_vs_floor target <= 1.5).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zlayer.runtime.linux import shim

RUNS = int(os.environ.get("RUNS", "60"))
DOCKER_CAPS = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]  # fmt: skip


def make_rootfs(root: Path) -> None:
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin" / "busybox")
    for name in subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True, check=True).stdout.split():
        if name != "busybox":
            (root / "bin" / name).symlink_to("busybox")
    for d in ("proc", "sys", "dev", "tmp", "etc"):
        (root / d).mkdir()


def make_bundle(base: Path, args: list[str]) -> Path:
    bundle = base / f"bundle-{args[0].strip('/').replace('/', '-')}"
    bundle.mkdir()
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"].update(terminal=False, args=args, noNewPrivileges=True)
    cfg["process"]["capabilities"] = {k: list(DOCKER_CAPS) for k in ("bounding", "effective", "permitted")}
    cfg["root"] = {"path": str(base / "rootfs"), "readonly": True}
    from zlayer.runtime.linux.seccomp import default_profile, to_oci

    cfg["linux"]["seccomp"] = to_oci(default_profile(), DOCKER_CAPS)
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


def time_command(make_cmd: Any, runs: int) -> tuple[float | None, str]:
    """Median wall time in ms of running the command `runs` times; (None, error) if it fails."""
    times = []
    for i in range(runs):
        cmd = make_cmd(i)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            return None, (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        times.append(dt * 1000)
    return statistics.median(times), ""


async def api_start(bundle: Path, root: Path, runs: int) -> float:
    times = []
    for _ in range(runs):
        cid = f"api-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        await shim.create(cid, bundle, root, None)
        await shim.start(cid, root)
        await shim.wait(cid, root)
        times.append((time.perf_counter() - t0) * 1000)
        await shim.delete(cid, root)
    return statistics.median(times)


async def idle_and_hundred(bundle: Path, root: Path, log_dir: Path) -> dict[str, float]:
    ids = [f"idle-{i:03d}" for i in range(100)]
    t0 = time.perf_counter()
    for cid in ids:
        await shim.create(cid, bundle, root, log_dir / f"{cid}.log")
        await shim.start(cid, root)
    hundred = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    rss, pss = [], []
    for cid in ids[:20]:
        st = await shim.state(cid, root)
        status = Path(f"/proc/{st.shim_pid}/status").read_text()
        rss.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))))
        rollup = Path(f"/proc/{st.shim_pid}/smaps_rollup").read_text()
        pss.append(int(next(line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:"))))
    for cid in ids:
        await shim.delete(cid, root, force=True)
    return {
        "start_100_s": round(hundred, 3),
        "shim_rss_kib_median": statistics.median(rss),
        "shim_pss_kib_median": statistics.median(pss),
    }


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("perf/runtime_start.py needs root (namespaces, cgroups, mounts)")
    base = Path(tempfile.mkdtemp(prefix="zlayer-perf-start-"))
    zl_root, runc_root, crun_root = base / "zl-state", base / "runc-state", base / "crun-state"
    try:
        make_rootfs(base / "rootfs")
        true_bundle = make_bundle(base, ["/bin/true"])
        sleep_bundle = make_bundle(base, ["/bin/sleep", "100000"])
        exe = str(shim.shim_path())
        # one warm-up each (page cache, the seccomp BPF cache for zlayer)
        subprocess.run([exe, "run", "--root", str(zl_root), "--bundle", str(true_bundle), "warm"], check=True)
        floor_cmd = ["unshare", "--fork", "--pid", "--mount", "--uts", "--ipc", "--net", "chroot", str(base / "rootfs"),
                     "/bin/true"]  # fmt: skip
        results: dict[str, Any] = {"runs": RUNS}
        zl, _ = time_command(
            lambda i: [exe, "run", "--root", str(zl_root), "--bundle", str(true_bundle), f"zl-{i}"], RUNS
        )
        runc, runc_err = time_command(
            lambda i: ["runc", "--root", str(runc_root), "run", "--bundle", str(true_bundle), f"runc-{i}"], RUNS
        )
        crun, crun_err = time_command(
            lambda i: ["crun", "--root", str(crun_root), "run", "--bundle", str(true_bundle), f"crun-{i}"], RUNS
        )
        floor, _ = time_command(lambda i: floor_cmd, RUNS)
        api = asyncio.run(api_start(true_bundle, zl_root, max(20, RUNS // 2)))
        results.update(
            zlayer_median_ms=round(zl, 3) if zl else None,
            zlayer_api_median_ms=round(api, 3),
            runc_median_ms=round(runc, 3) if runc else None,
            crun_median_ms=round(crun, 3) if crun else None,
            floor_median_ms=round(floor, 3) if floor else None,
        )
        if runc_err:
            results["runc_error"] = runc_err
        if crun_err:
            results["crun_error"] = crun_err
        results.update(asyncio.run(idle_and_hundred(sleep_bundle, zl_root, base)))
        if zl and runc:
            results["median_vs_runc"] = round(zl / runc, 3)
        if zl and crun:
            results["median_vs_crun"] = round(zl / crun, 3)
        if zl and floor:
            results["median_vs_floor"] = round(zl / floor, 3)
        for key, value in results.items():
            print(f"{key:>24}: {value}", file=sys.stderr)
        print(json.dumps(results))
    finally:
        for root in (zl_root,):
            for st in asyncio.run(shim.list_containers(root)) if root.exists() else []:
                for pid in (st.pid, st.shim_pid):
                    if pid > 0:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
