"""The Docker Engine API shim driven only by the real clients: Debian's ``docker`` CLI (``/usr/bin/docker``, the
docker.io client, not whatever ``docker`` comes first on PATH), ``docker-compose`` and docker-py, with
``DOCKER_HOST=unix://<the daemon's shim socket>`` and no dockerd running. One daemon (in a network namespace of the
module's) serves every test; images come from the fixtures (busybox, imported and pushed to a docker-registry)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.daemon_live import LiveNode, live_node

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]

DOCKER = "/usr/bin/docker"  # Debian's docker.io client; /usr/local/bin/docker may be another build
IMAGE = "zlayer-svc/httpd:v1"  # busybox with /www/index.html "v1" (tests.fixtures.daemon_node.service_image)
HTTPD = ["httpd", "-f", "-p", "8080", "-h", "/www"]


class Shim:
    def __init__(self, node: LiveNode, sock: Path) -> None:
        self.node = node
        self.sock = sock
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(sock.parent / "dockercfg")}
        self.env.pop("DOCKER_CONTEXT", None)

    def docker(self, *args: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              input=input)  # fmt: skip

    def ok(self, *args: str, timeout: float = 60, input: str | None = None) -> str:
        r = self.docker(*args, timeout=timeout, input=input)
        assert r.returncode == 0, f"docker {' '.join(args)}: {r.stdout}{r.stderr}\n{self.node.log_tail()}"
        return r.stdout

    def raw(self, method: str, path: str, body: Any = None, sock: Path | None = None) -> tuple[int, Any]:
        """A request straight to the socket (what no client would send); ``sock``: zlayer's own API's."""
        status, _, raw = _unix_request(sock or self.sock, method, path, body)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")


def _unix_request(sock: Path, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    class Conn(http.client.HTTPConnection):
        def connect(s) -> None:
            s.sock = socket.socket(socket.AF_UNIX)
            s.sock.connect(str(sock))

    conn = Conn("localhost", timeout=60)
    try:
        data = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else None
        kind = "application/x-tar" if isinstance(body, bytes) and method == "PUT" else "application/json"
        conn.request(method, path, body=data, headers={"Content-Type": kind} if data else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shim]:
    if not Path(DOCKER).exists() or not shutil.which("docker-compose"):
        pytest.fail("Debian's docker.io and docker-compose are peers of this test (.ci/apt-packages.txt)")
    root = tmp_path_factory.mktemp("dockerapi")
    sock = root / "docker.sock"
    with live_node(root, ["--bind", "none", "--docker-socket-path", str(sock)]) as node:
        s = Shim(node, sock)
        yield s
        for cid in s.docker("ps", "-aq").stdout.split():
            s.docker("rm", "-f", cid)


def test_cli_run_ps_logs_exec_cp_stop_rm(shim: Shim, tmp_path: Path) -> None:
    out = shim.ok("version", "--format", "{{.Client.APIVersion}} {{.Server.APIVersion}}")
    assert out.split() == ["1.41", "1.43"]  # the client negotiated down to its own version, which we serve
    port = shim.node.free_port()
    cid = shim.ok("run", "-d", "--name", "web", "-p", f"{port}:8080", "-e", "GREETING=hi", IMAGE, *HTTPD).strip()
    assert len(cid) == 64
    ps = shim.ok("ps", "--format", "{{.ID}} {{.Names}} {{.Status}} {{.Ports}}")
    assert f"{cid[:12]} web Up" in ps and f"0.0.0.0:{port}->8080/tcp" in ps
    assert shim.ok("port", "web").strip() == f"8080/tcp -> 0.0.0.0:{port}"
    # on zlayer's runtime and network: `zlayer ps -c` lists it, and the published port serves its page
    zps = shim.node.zl("ps", "-c").stdout
    [row] = [ln.split() for ln in zps.splitlines() if f"{cid[:12]}-rep-0" in ln]
    assert row[0] == "docker" and row[-3:-1] == ["linux", "running"], zps
    inspect = json.loads(shim.ok("inspect", "web"))[0]
    gateway = inspect["NetworkSettings"]["Gateway"]  # the node's own address on its bridge
    got = shim.node.sh("curl", "-s", "--max-time", "10", f"http://{gateway}:{port}/")
    assert got.stdout == "v1\n", got.stderr
    assert inspect["State"]["Running"] and inspect["Name"] == "/web" and inspect["Config"]["Image"] == IMAGE
    assert "GREETING=hi" in inspect["Config"]["Env"] and inspect["NetworkSettings"]["IPAddress"].startswith("10.")
    assert "httpd -f -p 8080" in shim.ok("top", "web")
    # exec: output, exit code, stdin, and a terminal (through a pty: script)
    r = shim.docker("exec", "web", "sh", "-c", "echo $GREETING; echo oops >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "hi\n", "oops\n")
    assert shim.ok("exec", "-i", "web", "sh", "-c", "wc -c", input="four").strip() == "4"
    term = subprocess.run(["script", "-qec", f"{DOCKER} exec -it web sh -c 'tty; exit 5'", "/dev/null"],
                          env=shim.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert term.returncode == 5 and "/dev/pts/" in term.stdout, term.stdout + term.stderr
    # cp both ways
    (tmp_path / "in.txt").write_text("copied in\n")
    shim.ok("cp", str(tmp_path / "in.txt"), "web:/tmp/in.txt")
    assert shim.ok("exec", "web", "cat", "/tmp/in.txt") == "copied in\n"
    shim.ok("cp", "web:/www/index.html", str(tmp_path / "out.html"))
    assert (tmp_path / "out.html").read_text() == "v1\n"
    r = shim.docker("cp", "web:/no/such/file", str(tmp_path / "x"))
    assert r.returncode != 0 and "/no/such/file" in r.stderr
    # logs -f follows a container that writes
    shim.ok("run", "-d", "--name", "talker", IMAGE, "sh", "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done")  # fmt: skip
    follow = subprocess.Popen([DOCKER, "logs", "-f", "talker"], env=shim.env, stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout is not None
        assert [follow.stdout.readline() for _ in range(3)] == ["line 0\n", "line 1\n", "line 2\n"]
    finally:
        follow.kill()
        follow.wait()
    # stop, ps -a, rm; run --rm prints and leaves nothing
    assert shim.ok("stop", "-t", "1", "web", "talker").split() == ["web", "talker"]
    assert "Exited (137)" in shim.ok("ps", "-a", "--filter", "name=web", "--format", "{{.Status}}")
    assert shim.ok("ps", "-q") == ""
    shim.ok("rm", "web", "talker")
    assert shim.ok("run", "--rm", IMAGE, "echo", "hello") == "hello\n"
    r = shim.docker("run", "--rm", IMAGE, "sh", "-c", "exit 7")
    assert r.returncode == 7
    assert shim.ok("ps", "-aq") == ""
    assert f"{cid[:12]}-rep-0" not in shim.node.zl("ps", "-c").stdout
    # run -it: a shell on a terminal, typed into (through a pty: script); run -i: stdin piped, stdout and stderr apart
    typed = "echo hi-$((40+2)); tty; exit 6\n"
    term = subprocess.run(["script", "-qec", f"{DOCKER} run -it --rm {IMAGE} sh", "/dev/null"], env=shim.env,
                          input=typed, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert term.returncode == 6 and "hi-42\n/dev/pts/0" in term.stdout.replace("\r", ""), term.stdout + term.stderr
    r = shim.docker("run", "-i", "--rm", IMAGE, "sh", "-c", "wc -c; echo done >&2; exit 2", input="12345")
    assert (r.returncode, r.stdout, r.stderr) == (2, "5\n", "done\n")
    # a detached -it container, attached to later; what it wrote is in its logs too
    shim.ok("run", "-d", "-it", "--name", "bg", IMAGE, "sh")
    term = subprocess.run(["script", "-qec", f"{DOCKER} attach bg", "/dev/null"], env=shim.env,
                          input="echo attached; exit 9\n", capture_output=True, text=True, timeout=60)  # fmt: skip
    assert term.returncode == 9 and "attached" in term.stdout, term.stdout + term.stderr
    assert "attached" in shim.ok("logs", "bg")
    shim.ok("rm", "bg")
    # events of what happened to `web`
    ev = shim.ok("events", "--since", "0", "--until", str(int(time.time()) + 1), "--filter", "container=web",
                 "--format", "{{.Action}}")  # fmt: skip
    assert ev.split()[:2] == ["create", "start"] and "die" in ev.split() and "destroy" in ev.split()


def test_cli_images_volumes_networks(shim: Shim) -> None:
    registry = shim.node.registry()  # svc/httpd:v1 pushed to a docker-registry in the node's namespace
    pulled = shim.ok("pull", f"{registry}/svc/httpd:v1")
    assert "Pulling from svc/httpd" in pulled and f"Downloaded newer image for {registry}/svc/httpd:v1" in pulled
    shim.ok("tag", f"{registry}/svc/httpd:v1", "mine/httpd:2")
    images = shim.ok("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").splitlines()
    ids = {line.split()[0]: line.split()[1] for line in images}
    assert ids["mine/httpd:2"] == ids[f"{registry}/svc/httpd:v1"] == ids[IMAGE]  # one image, three names
    assert json.loads(shim.ok("image", "inspect", "mine/httpd:2"))[0]["RepoTags"]
    shim.ok("push", f"{registry}/svc/httpd:v1")
    assert shim.ok("rmi", "mine/httpd:2").strip() == "Untagged: mine/httpd:2"
    r = shim.docker("pull", f"{registry}/no/such:1")
    assert r.returncode != 0 and "no/such" in r.stderr
    # a named volume outlives the container that wrote it
    shim.ok("volume", "create", "data1")
    assert "data1" in shim.ok("volume", "ls", "--format", "{{.Name}}").split()
    shim.ok("run", "--rm", "-v", "data1:/data", IMAGE, "sh", "-c", "echo kept > /data/f")
    assert shim.ok("run", "--rm", "-v", "data1:/data", IMAGE, "cat", "/data/f") == "kept\n"
    shim.ok("volume", "rm", "data1")
    # a user network: containers on it find each other by name (the node's DNS)
    shim.ok("network", "create", "net1")
    assert "net1" in shim.ok("network", "ls", "--format", "{{.Name}}").split()
    shim.ok("run", "-d", "--name", "srv", "--network", "net1", IMAGE, *HTTPD)
    retry = "for i in 1 2 3 4 5 6 7 8 9 10; do wget -qO- http://srv:8080/ && exit; sleep 0.3; done"
    fetched = shim.ok("run", "--rm", "--network", "net1", IMAGE, "sh", "-c", retry)
    assert fetched == "v1\n"
    r = shim.docker("network", "rm", "net1")
    assert r.returncode != 0 and "active endpoints" in r.stderr
    shim.ok("rm", "-f", "srv")
    shim.ok("network", "rm", "net1")
    df = shim.ok("system", "df", "--format", "{{.Type}} {{.TotalCount}}")
    assert "Images" in df and "Containers 0" in df
    assert "Server Version" in shim.ok("info")


def test_cli_lifecycle_stats_save_load(shim: Shim, tmp_path: Path) -> None:
    shim.ok("run", "-d", "--name", "lc", "--restart", "always", "-m", "64m", IMAGE, "sleep", "300")
    stats = shim.ok("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", "lc")
    assert stats.startswith("lc ") and "/ 64MiB" in stats, stats
    started = json.loads(shim.ok("inspect", "lc"))[0]["State"]["StartedAt"]
    shim.ok("restart", "-t", "1", "lc")
    again = json.loads(shim.ok("inspect", "lc"))[0]["State"]
    assert again["Running"] and again["StartedAt"] != started
    shim.ok("pause", "lc")
    assert "(Paused)" in shim.ok("ps", "--filter", "name=lc", "--format", "{{.Status}}")
    shim.ok("unpause", "lc")
    shim.ok("rename", "lc", "lc2")
    shim.ok("update", "--restart", "no", "lc2")
    assert json.loads(shim.ok("inspect", "lc2"))[0]["HostConfig"]["RestartPolicy"]["Name"] == "no"
    shim.ok("kill", "lc2")
    assert shim.ok("wait", "lc2").strip() == "137"
    assert "lc2" not in shim.ok("ps", "--format", "{{.Names}}")  # `no` now: not restarted after the kill
    pruned = shim.ok("container", "prune", "-f")
    assert "Total reclaimed space" in pruned and shim.ok("ps", "-aq") == ""
    # save and load an image through the shim
    shim.ok("tag", IMAGE, "saved/img:1")
    shim.ok("save", "-o", str(tmp_path / "img.tar"), "saved/img:1")
    shim.ok("rmi", "saved/img:1")
    assert "Loaded image: saved/img:1" in shim.ok("load", "-i", str(tmp_path / "img.tar"))
    assert shim.ok("run", "--rm", "saved/img:1", "cat", "/www/index.html") == "v1\n"
    shim.ok("rmi", "saved/img:1")


def test_compose_up_ps_logs_down(shim: Shim, tmp_path: Path) -> None:
    port = shim.node.free_port()
    (tmp_path / "docker-compose.yml").write_text(f"""version: "3.8"
services:
  web:
    image: {IMAGE}
    command: {json.dumps(HTTPD)}
    ports: ["{port}:8080"]
  client:
    image: {IMAGE}
    command: ["sh", "-c", "until wget -qO- http://web:8080/; do sleep 0.2; done; echo fetched; sleep 300"]
    depends_on: [web]
  built:
    build: ./built
""")
    (tmp_path / "built").mkdir()
    (tmp_path / "built" / "Dockerfile").write_text(f'FROM {IMAGE}\nCMD ["sh", "-c", "echo from-build; sleep 300"]\n')

    def compose(*args: str) -> str:
        r = subprocess.run(["docker-compose", "-p", "demo", *args], env=shim.env, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, f"docker-compose {' '.join(args)}: {r.stdout}{r.stderr}\n{shim.node.log_tail()}"
        return r.stdout + r.stderr

    up = compose("up", "-d")
    assert "demo_web_1" in up and "demo_client_1" in up
    ps = compose("ps")
    assert "demo_web_1" in ps and "demo_client_1" in ps and f"0.0.0.0:{port}->8080/tcp" in ps
    assert ps.count(" Up ") == 3 and "demo_built_1" in ps  # `built` built through the shim's /build first
    deadline = time.monotonic() + 30
    while "fetched" not in (logs := compose("logs", "client")) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "client_1  | v1" in logs.replace("\x1b[36m", "").replace("\x1b[0m", "") and "fetched" in logs
    assert "from-build" in compose("logs", "built")
    down = compose("down", "-t", "1")
    assert "Removing demo_web_1" in down and "Removing network demo_default" in down
    assert shim.ok("ps", "-aq") == ""
    assert "demo_default" not in shim.ok("network", "ls")
    shim.ok("rmi", "demo_built")


def test_docker_py(shim: Shim) -> None:
    import docker

    client = docker.DockerClient(base_url=f"unix://{shim.sock}", version="auto")
    try:
        assert client.version()["ApiVersion"] == "1.43"
        policy = {"Name": "on-failure", "MaximumRetryCount": 2}
        c = client.containers.run(IMAGE, ["sh", "-c", "echo out; echo err >&2; sleep 300"], detach=True, name="py",
                                  environment={"A": "1"}, restart_policy=policy)  # fmt: skip
        assert [x.name for x in client.containers.list()] == ["py"]
        assert client.containers.list(filters={"name": "nope"}) == []
        deadline = time.monotonic() + 10
        while c.logs() != b"out\nerr\n" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.logs(stdout=True, stderr=False) == b"out\n"
        assert c.exec_run(["sh", "-c", "echo $A; exit 4"]) == (4, b"1\n")
        assert c.exec_run(["sh", "-c", "test -t 0 && echo tty"], tty=True).output == b"tty\r\n"
        c.reload()
        assert c.status == "running" and c.attrs["HostConfig"]["RestartPolicy"]["Name"] == "on-failure"
        c.pause()
        c.reload()
        assert c.status == "paused"
        c.unpause()
        c.rename("py2")
        assert client.containers.get("py2").id == c.id
        assert client.containers.run(IMAGE, ["echo", "direct"], remove=True) == b"direct\n"
        c.stop(timeout=1)
        assert c.wait()["StatusCode"] == 137
        c.remove()
        with pytest.raises(docker.errors.NotFound):
            client.containers.get("py2")
        assert IMAGE in client.images.get(IMAGE).tags
        with pytest.raises(docker.errors.ImageNotFound):
            client.images.get("no/such:image")
        # images: pull, tag, list, build, remove
        registry = shim.node.registry()
        pulled = client.images.pull(f"{registry}/svc/httpd", tag="v1")
        assert pulled.tag("py/tagged", "1") and "py/tagged:1" in [t for i in client.images.list() for t in i.tags]
        dockerfile = f'FROM {IMAGE}\nRUN echo built-by-py > /b\nCMD ["cat", "/b"]\n'.encode()
        built, log = client.images.build(fileobj=io.BytesIO(dockerfile), tag="py/built")
        assert "py/built:latest" in built.tags and any("Successfully built" in x.get("stream", "") for x in log)
        assert client.containers.run("py/built", remove=True) == b"built-by-py\n"
        client.images.remove("py/tagged:1")
        client.images.remove("py/built")
        # volumes and networks
        vol = client.volumes.create("pyvol")
        assert "pyvol" in [v.name for v in client.volumes.list()]
        net = client.networks.create("pynet")
        assert "pynet" in [n.name for n in client.networks.list()]
        since = int(time.time()) - 1
        # a published port, a file in and out of the container, and its events
        port = shim.node.free_port()
        c = client.containers.run(IMAGE, HTTPD, detach=True, name="pyweb", ports={"8080/tcp": port},
                                  volumes={"pyvol": {"bind": "/data", "mode": "rw"}}, network="pynet")  # fmt: skip
        c.reload()
        assert c.ports["8080/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(port)}]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            item = tarfile.TarInfo("in.txt")
            item.size = 3
            tar.addfile(item, io.BytesIO(b"py\n"))
        assert c.put_archive("/data", buf.getvalue())
        bits, st = c.get_archive("/data/in.txt")
        with tarfile.open(fileobj=io.BytesIO(b"".join(bits))) as tar:
            got = tar.extractfile("in.txt")
            assert got is not None and got.read() == b"py\n" and st["size"] == 3
        c.remove(force=True)
        events = client.events(since=since, until=int(time.time()) + 1, decode=True,
                               filters={"container": "pyweb"})  # fmt: skip
        assert [e["Action"] for e in events][:2] == ["create", "start"]
        net.remove()
        vol.remove()
        assert "pyvol" not in [v.name for v in client.volumes.list()]
    finally:
        client.close()


def test_bad_input_answers_as_docker(shim: Shim) -> None:
    st = shim.sock.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660 and (st.st_uid, st.st_gid) == (0, 0)  # root-only, as dockerd's
    status, body = shim.raw("GET", "/v1.41/no/such/endpoint")
    assert (status, body) == (404, {"message": "page not found"})
    status, body = shim.raw("GET", "/v1.99/version")
    assert status == 400 and body["message"] == "client version 1.99 is too new. Maximum supported API version is 1.43"
    status, body = shim.raw("GET", "/v1.12/version")
    assert status == 400 and "client version 1.12 is too old" in body["message"]
    status, body = shim.raw("POST", "/v1.41/containers/create", b"{not json")
    assert status == 400 and "invalid JSON" in body["message"]
    status, body = shim.raw("POST", "/v1.41/containers/create", {"Image": IMAGE, "HostConfig": {"VolumeDriver": "x"}})
    assert (status, body) == (400, {"message": "HostConfig.VolumeDriver is not supported by this node (zlayer)"})
    dev = {"Image": IMAGE, "HostConfig": {"Devices": [{"PathOnHost": "/dev/no-such-device"}]}}
    status, body = shim.raw("POST", "/v1.41/containers/create", dev)
    assert status == 400 and "/dev/no-such-device" in body["message"], body
    status, body = shim.raw("POST", "/v1.41/containers/create", {"Image": "no/such:image"})
    assert (status, body) == (404, {"message": "No such image: no/such:image"})
    status, body = shim.raw("POST", "/v1.41/containers/create", {"Image": IMAGE, "HostConfig": {"Memory": "lots"}})
    assert status == 400 and "message" in body
    status, body = shim.raw("POST", "/v1.41/containers/create", {"Image": IMAGE, "HostConfig": {"Memory": -5}})
    assert status == 400 and "positive number of bytes" in body["message"], body
    status, body = shim.raw("POST", "/v1.41/containers/nope/start")
    assert (status, body) == (404, {"message": "No such container: nope"})
    status, body = shim.raw("GET", "/v1.41/containers/json?filters=%7Bbad")
    assert status == 400 and "invalid filter" in body["message"]
    status, _ = shim.raw("GET", "/_ping")
    assert status == 200  # the daemon is alive after all of it


def test_zlayer_container_api_and_cli(shim: Shim, tmp_path: Path) -> None:
    """ZLayer's own container API (and `zlayer container ...`) over the same standalone containers the shim makes."""
    node, api = shim.node, shim.node.data / "run" / "zlayer.sock"

    def zl(*args: str) -> str:
        r = node.zl(*args)
        assert r.returncode == 0, f"zlayer {' '.join(args)}: {r.stdout}{r.stderr}\n{node.log_tail()}"
        return r.stdout

    cid = zl("container", "create", "--name", "solo", "-e", "A=1", "--restart", "on_failure", IMAGE,
             "sh", "-c", "echo $A > /tmp/made; exec sleep 300").strip()  # fmt: skip
    assert cid == "solo-rep-0"
    info = json.loads(zl("container", "inspect", cid))
    assert info["state"] == "running" and info["deployment"] == "standalone" and info["service"] == "solo"
    assert "sleep 300" in zl("container", "top", cid)
    assert "A /tmp/made" in zl("container", "diff", cid).splitlines()
    # a tar in and out of the running container (archive put/get), the path's stat in Docker's header
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        item = tarfile.TarInfo("hello.txt")
        item.size = 6
        tar.addfile(item, io.BytesIO(b"hello\n"))
    status, _, _ = _unix_request(api, "PUT", f"/api/v1/containers/{cid}/archive?path=/tmp", buf.getvalue())
    assert status == 200
    status, headers, data = _unix_request(api, "GET", f"/api/v1/containers/{cid}/archive?path=/tmp/hello.txt")
    assert status == 200 and json.loads(base64.b64decode(headers["x-docker-container-path-stat"]))["size"] == 6
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = tar.extractfile("hello.txt")
        assert got is not None and got.read() == b"hello\n"
    status, body = shim.raw("GET", f"/api/v1/containers/{cid}/archive?path=/no/such", sock=api)
    assert status == 404 and "/no/such" in body["message"]
    # zlayer container cp, as docker cp: a directory in, a file in under another name, both out again
    (tmp_path / "cpdir").mkdir()
    (tmp_path / "cpdir" / "a.txt").write_text("A\n")
    zl("container", "cp", str(tmp_path / "cpdir"), f"{cid}:/tmp")
    zl("container", "cp", str(tmp_path / "cpdir" / "a.txt"), f"{cid}:/tmp/renamed.txt")
    got = node.api(
        "POST", f"/api/v1/containers/{cid}/exec", {"command": ["cat", "/tmp/cpdir/a.txt", "/tmp/renamed.txt"]}
    )
    assert (got["exit_code"], got["stdout"]) == (0, "A\nA\n")
    zl("container", "cp", f"{cid}:/tmp/cpdir", str(tmp_path / "out"))
    zl("container", "cp", f"{cid}:/tmp/renamed.txt", str(tmp_path))
    assert (tmp_path / "out" / "a.txt").read_text() == "A\n" and (tmp_path / "renamed.txt").read_text() == "A\n"
    r = node.zl("container", "cp", f"{cid}:/no/such", str(tmp_path))
    assert r.returncode != 0 and "/no/such" in r.stderr and "Traceback" not in r.stderr
    # pause, stop, wait, start, rename, update, kill, prune
    zl("container", "pause", cid)
    assert json.loads(zl("container", "inspect", cid))["state"] == "paused"
    zl("container", "unpause", cid)
    zl("container", "stop", "-t", "1", cid)
    assert zl("container", "wait", cid).strip() == "137"
    zl("container", "start", cid)
    assert json.loads(zl("container", "inspect", cid))["state"] == "running"
    zl("container", "rename", cid, "solo2")
    assert json.loads(zl("container", "inspect", cid))["service"] == "solo2"
    zl("container", "update", cid, "--restart", "no")
    zl("container", "kill", "-s", "KILL", cid)
    assert zl("container", "wait", cid).strip() == "137"
    assert f"Deleted {cid}" in zl("container", "prune")
    assert cid not in zl("container", "ls")
    # images: tag, remove, prune through the API
    status, _ = shim.raw("POST", "/api/v1/images/tag", {"source": IMAGE, "target": "retag/x:1"}, sock=api)
    assert status == 204 and "retag/x:1" in shim.ok("images", "--format", "{{.Repository}}:{{.Tag}}")
    status, _ = shim.raw("DELETE", "/api/v1/images/retag%2Fx:1", sock=api)
    assert status == 204 and "retag/x" not in shim.ok("images")
    status, body = shim.raw("POST", "/api/v1/system/prune", sock=api)
    assert status == 200 and body["space_reclaimed"] >= 0
    # what it refuses, and how
    status, body = shim.raw("POST", "/api/v1/containers", {"image": IMAGE, "health_check": {"type": "tcp"}}, sock=api)
    assert status == 400 and body["where"] == "health_check"
    status, body = shim.raw("POST", "/api/v1/containers", {"image": IMAGE, "resources": {"memory": "lots"}}, sock=api)
    assert status == 400 and "resources.memory" in body["message"]
    status, body = shim.raw("POST", "/api/v1/containers/nope-rep-0/start", sock=api)
    assert status == 404


def test_zlayer_docker_verbs(shim: Shim) -> None:
    """`zlayer docker …`: Docker's verbs as zlayer's own commands over ZLayer's API (no Docker client involved)."""
    node = shim.node

    def zl(*args: str) -> str:
        r = node.zl(*args)
        assert r.returncode == 0, f"zlayer {' '.join(args)}: {r.stdout}{r.stderr}\n{node.log_tail()}"
        return r.stdout

    cid = zl("docker", "run", "-d", "--name", "zd", "-e", "A=x", IMAGE, "sh", "-c", "echo $A; exec sleep 300").strip()
    assert cid == "zd-rep-0" and cid in zl("docker", "ps")
    assert "sleep 300" in zl("docker", "top", cid) and zl("docker", "logs", cid) == "[stdout] x\n"
    r = node.zl("docker", "run", "--rm", IMAGE, "sh", "-c", "echo out-of-run; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out-of-run\n", "err\n")
    zl("docker", "stop", "-t", "1", cid)
    assert zl("docker", "wait", cid).strip() == "137"
    zl("docker", "rm", cid)
    assert "zd-rep-0" not in zl("docker", "ps") and "zlayer-svc/httpd" in zl("docker", "images")
    r = node.zl("docker", "run", "-d", "--rm", IMAGE, "true")
    assert r.returncode != 0 and "--rm" in r.stderr and "Traceback" not in r.stderr


def test_containers_survive_a_daemon_restart(shim: Shim) -> None:
    """Containers outlive the daemon: a restarted `zlayer serve` serves the same Docker containers (running ones
    re-adopted, not restarted; exited ones still listed; one that ended meanwhile recorded exited), the networks
    made through the shim, and ZLayer's own standalone containers."""
    node = shim.node
    port = node.free_port()
    shim.ok("network", "create", "kept-net")
    cid = shim.ok("run", "-d", "--name", "kept", "--network", "kept-net", "-p", f"{port}:8080", IMAGE, "sh", "-c",
                  f"echo before; exec {' '.join(HTTPD)}").strip()  # fmt: skip
    assert shim.docker("run", "--name", "done", IMAGE, "sh", "-c", "exit 4").returncode == 4
    shim.ok("run", "-d", "--name", "ends", IMAGE, "sh", "-c", "sleep 2; exit 5")
    shim.ok("run", "-d", "--name", "phoenix", "--restart", "always", IMAGE, "sh", "-c", "sleep 2; exit 1")
    assert node.zl("container", "create", "--name", "zsolo", IMAGE, "sleep", "300").returncode == 0
    pid = json.loads(shim.ok("inspect", "kept"))[0]["State"]["Pid"]
    node.signal_and_wait(15)
    (node.data / "standalone" / "garbage-rep-0.json").write_text("{not json")  # what a next daemon must survive
    time.sleep(2.5)  # `ends` ends while no daemon watches
    node.start()
    ps = shim.ok("ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}} {{.Ports}}")
    assert f"{cid[:12]} kept Up" in ps and f"0.0.0.0:{port}->8080/tcp" in ps, ps
    assert "done Exited (4)" in ps and "ends Exited (5)" in ps, ps
    deadline = time.monotonic() + 20  # `phoenix` ended while no daemon watched: its policy starts it again
    while json.loads(shim.ok("inspect", "phoenix"))[0]["RestartCount"] < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert json.loads(shim.ok("inspect", "phoenix"))[0]["RestartCount"] >= 1
    kept = json.loads(shim.ok("inspect", "kept"))[0]
    assert kept["State"]["Pid"] == pid and "kept-net" in kept["NetworkSettings"]["Networks"]  # the same process
    assert "kept-net" in shim.ok("network", "ls", "--format", "{{.Name}}").split()
    got = node.sh("curl", "-s", "--max-time", "10", f"http://{kept['NetworkSettings']['Gateway']}:{port}/")
    assert got.stdout == "v1\n", got.stderr
    assert shim.ok("exec", "kept", "echo", "in") == "in\n" and "before" in shim.ok("logs", "kept")
    zps = node.zl("ps", "-c").stdout
    assert f"{cid[:12]}-rep-0" in zps and "zsolo-rep-0" in zps, zps
    assert json.loads(node.zl("container", "inspect", "zsolo-rep-0").stdout)["state"] == "running"
    assert "standalone container garbage-rep-0 not taken back" in node.log_tail(100_000)
    assert not (node.data / "standalone" / "garbage-rep-0.json").exists()
    # and they are still managed: stopped, started, removed as before
    shim.ok("start", "done")
    assert shim.ok("wait", "done").strip() == "4"
    shim.ok("rm", "-f", "kept", "done", "ends", "phoenix")
    shim.ok("network", "rm", "kept-net")
    assert node.zl("container", "rm", "--force", "zsolo-rep-0").returncode == 0
    assert shim.ok("ps", "-aq") == "" and "zsolo" not in node.zl("ps", "-c").stdout


def test_cli_build_then_run(shim: Shim, tmp_path: Path) -> None:
    """`docker build` sends the context as a tarball to POST /build; the node's builder builds it, the CLI shows
    Docker's progress, and the image runs."""
    (tmp_path / "greeting.txt").write_text("from the context\n")
    (tmp_path / "build.Dockerfile").write_text(
        f"FROM {IMAGE}\nARG WHO=nobody\nCOPY greeting.txt /greeting.txt\n"
        'RUN echo "built for $WHO" > /built.txt && echo step-output\n'
        'CMD ["cat", "/greeting.txt", "/built.txt"]\n'
    )
    (tmp_path / "bad.Dockerfile").write_text(f"FROM {IMAGE}\nRUN echo failing >&2; exit 3\n")
    dockerfile = str(tmp_path / "build.Dockerfile")
    built = shim.ok("build", "-t", "built/x", "-f", dockerfile, "--build-arg", "WHO=docker", str(tmp_path),
                    timeout=300)  # fmt: skip
    assert "Step 1/5 : FROM" in built and "step-output" in built, built
    assert "Successfully built " in built and "Successfully tagged built/x:latest" in built, built
    assert shim.ok("run", "--rm", "built/x") == "from the context\nbuilt for docker\n"
    again = shim.ok("build", "-q", "-t", "built/x", "-f", dockerfile, "--build-arg", "WHO=docker", str(tmp_path))
    assert again.strip() == json.loads(shim.ok("image", "inspect", "built/x"))[0]["Id"]  # the same image, cached
    r = shim.docker("build", "-f", str(tmp_path / "bad.Dockerfile"), str(tmp_path), timeout=300)
    assert r.returncode != 0 and "failing" in r.stdout + r.stderr and "exit" in r.stderr, r.stdout + r.stderr
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(tmp_path / "greeting.txt", "greeting.txt")
    status, body = shim.raw("POST", "/v1.41/build?dockerfile=Dockerfile", buf.getvalue())
    assert (status, body) == (500, {"message": "Cannot locate specified Dockerfile: Dockerfile"})
    status, body = shim.raw("POST", "/v1.41/build?dockerfile=../../etc/passwd", buf.getvalue())
    assert status == 400 and "inside the build context" in body["message"]
    status, body = shim.raw("POST", "/v1.41/build", b"not a tarball at all")
    assert status == 400 and "not a readable tarball" in body["message"]
    status, body = shim.raw("POST", "/v1.41/build?t=Bad%20Tag", buf.getvalue())
    assert status == 400 and "invalid reference format" in body["message"], body
    status, body = shim.raw("POST", "/v1.41/build?version=2", buf.getvalue())  # a BuildKit build request
    assert status == 400 and "DOCKER_BUILDKIT=0" in body["message"], body
    shim.ok("rmi", "built/x")
