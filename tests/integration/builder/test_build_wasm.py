"""A ZImagefile's wasm: mode (issue 18): `zlayer build` hands it to `zlayer wasm build` (Debian's clang and wasi-libc,
the fixtures' toolchain), runs ZLayer's pre_build/post_build commands around it with build_args in their environment,
and stores the program as a WASM OCI artifact under the build's tag; a failing toolchain names the step."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import wasmtime

from tests.fixtures.builder import BuildBase, zlayer_cmd
from zlayer.images import ImageStore

pytestmark = [pytest.mark.root, pytest.mark.peer]

HELLO = '#include <stdio.h>\nint main(void) { printf("hello from a ZImagefile\\n"); return 0; }\n'


def run_wasi(module: bytes, tmp: Path) -> str:
    """Run a WASIp1 command with wasmtime; what it printed."""
    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    wasi = wasmtime.WasiConfig()
    wasi.stdout_file = str(tmp / "stdout")
    store.set_wasi(wasi)
    linker.instantiate(store, wasmtime.Module(engine, module)).exports(store)["_start"](store)  # type: ignore[operator]
    return (tmp / "stdout").read_text()


def test_a_wasm_zimagefile_is_built_by_zlayer_wasm_build_into_an_artifact(
    tmp_path: Path, builder_base: BuildBase
) -> None:
    if shutil.which("clang") is None or shutil.which("wasm-ld") is None:
        pytest.fail("clang and lld are not installed (.ci/apt-packages.txt lists them)")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.c").write_text(HELLO)
    (ctx / "ZImagefile").write_text(
        "version: '1'\nwasm:\n  target: preview1\n  language: c\n  optimize: true\n  output: out/hello.wasm\n"
        "  build_args:\n    STAMP: from-build-args\n"
        '  pre_build:\n    - mkdir -p out && echo "$STAMP" > out/stamp\n'
        "  post_build:\n    - [sh, -c, 'test -s out/hello.wasm && echo post-build saw it']\n"
    )
    data = tmp_path / "data"
    r = zlayer_cmd(data, "build", "-t", "hello-wasm:1", "-t", "hello-wasm:latest", str(ctx))
    assert r.returncode == 0, r.stderr
    assert "[wasm 2/3] zlayer wasm build " in r.stderr and "-t wasip1" in r.stderr, r.stderr
    assert "[wasm 3/3] | post-build saw it" in r.stderr, r.stderr
    assert (ctx / "out" / "stamp").read_text() == "from-build-args\n"
    store = ImageStore(data / "images")
    image = store.get("hello-wasm:1")
    assert image.is_wasm and r.stdout.strip() == image.id
    assert store.get("hello-wasm:latest").digest == image.digest
    layer = store.blob_path(image.manifest["layers"][0]["digest"]).read_bytes()
    assert layer == (ctx / "out" / "hello.wasm").read_bytes()
    assert run_wasi(layer, tmp_path) == "hello from a ZImagefile\n"

    # --push: the artifact in the registry, in the layout wkg and ORAS read
    ref = f"{builder_base.registry.host}/wasm/hello:1"
    pushed = zlayer_cmd(data, "build", "--push", "-t", ref, str(ctx))
    assert pushed.returncode == 0, pushed.stderr
    raw = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert raw.returncode == 0, raw.stderr
    manifest = json.loads(raw.stdout)
    assert manifest["artifactType"].startswith("application/vnd.wasm") and manifest["layers"][0]["mediaType"] == (
        "application/wasm")  # fmt: skip

    # the toolchain's own failure, with the step that ran it and its last output
    (ctx / "hello.c").write_text("int main(void) { return undefined_thing; }\n")
    bad = zlayer_cmd(data, "build", str(ctx))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "ZImagefile:2: wasm: zlayer wasm build " in bad.stderr and "exited with code" in bad.stderr, bad.stderr
    assert "undefined_thing" in bad.stderr, bad.stderr
