"""ZLayer's build routes on a live daemon (issue 18): a build started through the API is followed live as
Server-Sent Events, shows its status, log and place in the list, and its image is in the daemon's store; an upload
builds too."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.builder import BuildBase, mounts_under
from tests.fixtures.daemon import DaemonProcess, free_port
from zlayer.images import ImageStore
from zlayer.runtime.linux import shim

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("build-api") / "data", {"ZLAYER_NODE_NETWORK": "off"})
    d.start()
    try:
        yield d
    finally:
        d.terminate()


def client(d: DaemonProcess) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{d.port}", headers={"Authorization": f"Bearer {d.token}"},
                        timeout=120)  # fmt: skip


def events(c: httpx.Client, build_id: str) -> list[tuple[str, dict[str, object]]]:
    out = []
    with c.stream("GET", f"/api/v1/build/{build_id}/stream") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
    return out


def test_a_build_through_the_api_streams_and_lands_in_the_store(
    tmp_path: Path, daemon: DaemonProcess, builder_base: BuildBase
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {builder_base.reference}\nRUN echo step output && echo x > /x\n"
                                    'CMD ["cat", "/x"]\n')  # fmt: skip
    with client(daemon) as c:
        assert {t["name"] for t in c.get("/api/v1/templates").json()} >= {"node20", "go", "bun"}
        r = c.post("/api/v1/build/json", json={"context_path": str(ctx), "tags": ["api/built:1"]})
        assert r.status_code == 202, r.text
        build_id = r.json()["build_id"]
        got = events(c, build_id)
        kinds = [k for k, _ in got]
        assert kinds[0] == "instruction_started" and kinds[-1] == "build_complete", got
        assert ("output", {"line": "step output", "is_stderr": False}) in got
        status = c.get(f"/api/v1/build/{build_id}").json()
        assert status["status"] == "complete" and status["image_id"].startswith("sha256:")
        assert status["image_id"] == ImageStore(daemon.data_dir / "images").get("api/built:1").id
        assert build_id in [b["id"] for b in c.get("/api/v1/builds").json()]
        assert "step output" in c.get(f"/api/v1/build/{build_id}/logs").text

        # an upload: the Dockerfile and a context tarball in a multipart body
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            data = b"uploaded\n"
            info = tarfile.TarInfo("up.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        files = {
            "dockerfile": (None, f"FROM {builder_base.reference}\nCOPY up.txt /up.txt\n"),
            "context": ("ctx.tar.gz", buf.getvalue(), "application/gzip"),
            "config": (None, json.dumps({"tags": ["api/upload:1"]})),
        }
        r = c.post("/api/v1/build", files=files)
        assert r.status_code == 202, r.text
        assert events(c, r.json()["build_id"])[-1][0] == "build_complete"
        image = ImageStore(daemon.data_dir / "images").get("api/upload:1")
        assert [(d / "up.txt").read_text() for d in image.layer_dirs if (d / "up.txt").is_file()] == ["uploaded\n"]

        # a failing build says why; a missing build is a 404
        (ctx / "Dockerfile").write_text(f"FROM {builder_base.reference}\nRUN exit 7\n")
        failed = c.post("/api/v1/build/json", json={"context_path": str(ctx)}).json()["build_id"]
        last = events(c, failed)[-1]
        assert last[0] == "build_failed" and "exited with code 7" in str(last[1]["error"])
        assert c.get(f"/api/v1/build/{failed}").json()["status"] == "failed"
        assert c.get("/api/v1/build/nope").status_code == 404


def test_a_build_cancelled_through_the_api_leaves_nothing_and_keeps_the_cache(
    tmp_path: Path, daemon: DaemonProcess, builder_base: BuildBase
) -> None:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text(f"{tmp_path.name}\n")  # a step of this test's own, not in the cache yet
    first = f"FROM {builder_base.reference}\nCOPY f /f\n"
    (ctx / "Dockerfile").write_text(first + "RUN echo started && sleep 1237\n")
    data = daemon.data_dir
    with client(daemon) as c:
        build_id = c.post("/api/v1/build/json", json={"context_path": str(ctx)}).json()["build_id"]
        with c.stream("GET", f"/api/v1/build/{build_id}/stream") as r:
            for line in r.iter_lines():
                if line.startswith("data: ") and json.loads(line[6:]).get("line") == "started":
                    break
        cancelled = c.delete(f"/api/v1/build/{build_id}")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "failed" and cancelled.json()["error"] == "the build was cancelled"
        assert events(c, build_id)[-1] == ("build_failed", {"error": "the build was cancelled"})
        # no mount, no step container or process, no half-written layer or work dir
        assert mounts_under(data) == [], mounts_under(data)
        assert asyncio.run(shim.list_containers(data / "builder" / "containers")) == []
        assert subprocess.run(["pgrep", "-f", "sleep 1237"], capture_output=True).returncode != 0
        assert list((data / "images" / "tmp").glob("build-*")) == []
        # the step done before the cancel comes from the cache; the build then completes
        (ctx / "Dockerfile").write_text(first + "RUN echo done\n")
        again = c.post("/api/v1/build/json", json={"context_path": str(ctx)}).json()["build_id"]
        got = events(c, again)
        assert ("instruction_complete", {"stage": "stage-0", "index": 2, "cached": True}) in got, got
        assert got[-1][0] == "build_complete", got


def test_a_deployment_runs_an_image_built_through_the_api(
    tmp_path: Path, daemon: DaemonProcess, builder_base: BuildBase
) -> None:
    ctx = tmp_path / "ctx"
    (ctx / "www").mkdir(parents=True)
    (ctx / "www" / "index.html").write_text(f"built through the api {tmp_path.name}\n")
    port = free_port()
    (ctx / "Dockerfile").write_text(
        f'FROM {builder_base.reference}\nCOPY www /www\nCMD ["httpd", "-f", "-p", "127.0.0.1:{port}", "-h", "/www"]\n'
    )
    spec = (  # the host's network: this daemon runs without the node network (ZLAYER_NODE_NETWORK=off)
        "version: v1\ndeployment: api-built\nservices:\n  web:\n"
        "    image: {name: 'api/web:1', pull_policy: never}\n"
        "    network_mode: host\n    scale: {mode: fixed, replicas: 1}\n"
        f"    health: {{start_grace: 0s, interval: 1s, timeout: 2s, retries: 3, check: {{type: tcp, port: {port}}}}}\n"
    )
    with client(daemon) as c:
        build_id = c.post("/api/v1/build/json", json={"context_path": str(ctx), "tags": ["api/web:1"]}).json()
        assert events(c, build_id["build_id"])[-1][0] == "build_complete"
        r = c.post("/api/v1/deployments", json={"spec": spec})
        assert r.status_code == 201, r.text
        try:
            deadline = time.monotonic() + 120
            while (status := c.get("/api/v1/deployments/api-built").json()["status"]) == "deploying":
                assert time.monotonic() < deadline, status
                time.sleep(0.5)
            assert status == "running", c.get("/api/v1/deployments/api-built/events", params={"follow": "false"}).text
            page = httpx.get(f"http://127.0.0.1:{port}/index.html", timeout=10)
            assert page.status_code == 200 and page.text == f"built through the api {tmp_path.name}\n"
        finally:
            c.delete("/api/v1/deployments/api-built")
