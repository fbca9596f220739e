"""config.json rules that need no privileges: argv/env/workdir merge, capabilities, seccomp shape, sysctls,
ulimits, user resolution, container ids. The runtime reads the typed, validated spec; what it would refuse in a spec
is refused when the spec is validated for deployment (``parse_deployable``), at its field path."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from zlayer.errors import RuntimeFailure, SpecError, UsageError
from zlayer.runtime import ContainerId
from zlayer.runtime.linux import bundle as b
from zlayer.runtime.linux import seccomp
from zlayer.runtime.linux.users import resolve_user
from zlayer.spec.container import tmpfs_mode
from zlayer.spec.loader import parse_deployable
from zlayer.spec.models import ServiceSpec

IMG = {"Entrypoint": ["/entry"], "Cmd": ["serve", "--port", "80"], "Env": ["PATH=/img/bin", "A=image"],
       "WorkingDir": "/srv", "User": "app"}  # fmt: skip


def svc(**fields: Any) -> ServiceSpec:
    """A service spec (the typed model the runtime receives) with these fields."""
    return ServiceSpec.model_validate({"image": {"name": "img"}, **fields})


def refused(body: str) -> list[str]:
    """The problems (``path: message``) deploying a service with this YAML body is refused with."""
    text = "version: v1\ndeployment: demo\nservices:\n  web:\n    image: {name: img}\n"
    with pytest.raises(SpecError) as err:
        parse_deployable(text + textwrap.indent(textwrap.dedent(body), "    "))
    return [f"{p.path}: {p.message}" for p in err.value.problems]


def argv(spec: dict[str, Any]) -> list[str]:
    return b.resolve_argv(svc(**spec), IMG, "img")


def test_image_entrypoint_and_cmd_used_when_spec_has_no_command() -> None:
    assert argv({}) == ["/entry", "serve", "--port", "80"]


def test_spec_args_replace_cmd_but_keep_image_entrypoint_as_docker_does() -> None:
    assert argv({"command": {"args": ["x"]}}) == ["/entry", "x"]


def test_spec_entrypoint_replaces_entrypoint_and_drops_image_cmd() -> None:
    assert argv({"command": {"entrypoint": ["/bin/sh"]}}) == ["/bin/sh"]
    assert argv({"command": {"entrypoint": ["/bin/sh"], "args": ["-c", "true"]}}) == ["/bin/sh", "-c", "true"]


def test_no_command_anywhere_is_a_clear_error_naming_the_image() -> None:
    with pytest.raises(RuntimeFailure, match="image busybox has no ENTRYPOINT or CMD"):
        b.resolve_argv(svc(), {}, "busybox")


def test_env_image_first_then_spec_later_wins_and_hostname_set() -> None:
    env = b.resolve_env(svc(env={"A": "spec", "B": "$E:ZL_TEST_VAR"}), IMG, hostname="web-rep-1", tty=False,
                        host_env={"ZL_TEST_VAR": "from-host"})  # fmt: skip
    assert env == ["PATH=/img/bin", "HOSTNAME=web-rep-1", "A=spec", "B=from-host"]


def test_env_default_path_and_term_with_tty() -> None:
    env = b.resolve_env(svc(), {}, hostname="h", tty=True, host_env={})
    assert env[0] == "PATH=" + b.DEFAULT_PATH and "TERM=xterm" in env


def test_env_missing_daemon_variable_is_an_error() -> None:
    # a fact of the node, not of the spec: the container create fails naming the variable
    with pytest.raises(RuntimeFailure, match=r"env\.X: \$E:NOPE"):
        b.resolve_env(svc(env={"X": "$E:NOPE"}), {}, hostname="h", tty=False, host_env={})


def test_workdir_spec_over_image_and_must_be_absolute() -> None:
    assert b.resolve_cwd(svc(), IMG) == "/srv"
    assert b.resolve_cwd(svc(command={"workdir": "/w"}), IMG) == "/w"
    assert b.resolve_cwd(svc(), {}) == "/"
    assert refused("command: {workdir: rel}") == [
        "services.web.command.workdir: 'rel': the working directory must be an absolute path"
    ]


def test_default_capabilities_are_dockers_14() -> None:
    assert sorted(b.resolve_caps(svc())) == sorted(b.DEFAULT_CAPS)
    assert len(b.DEFAULT_CAPS) == 14


def test_cap_add_and_drop_follow_docker() -> None:
    caps = b.resolve_caps(svc(capabilities=["net_admin"], cap_drop=["CAP_CHOWN", "kill"]))
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps and "CAP_KILL" not in caps
    assert b.resolve_caps(svc(cap_drop=["ALL"], capabilities=["NET_BIND_SERVICE"])) == ["CAP_NET_BIND_SERVICE"]
    assert refused("capabilities: [FLY]") == ["services.web.capabilities[0]: unknown capability 'FLY'"]


def test_privileged_gets_every_known_cap_no_seccomp_no_masks() -> None:
    assert b.resolve_caps(svc(privileged=True)) == list(b.host_caps())
    assert b.resolve_seccomp(svc(privileged=True), b.host_caps()) is None


def test_default_seccomp_is_moby_profile_in_oci_form() -> None:
    prof = b.resolve_seccomp(svc(), b.DEFAULT_CAPS)
    assert prof is not None
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO" and prof["defaultErrnoRet"] == 1
    assert "includes" not in str(prof) and "excludes" not in str(prof)
    names = {n for rule in prof["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule
             for n in rule["names"]}  # fmt: skip
    assert {"read", "write", "execve", "chroot"} <= names  # chroot: CAP_SYS_CHROOT is a default cap
    assert not names & {"mount", "unshare", "kexec_load", "reboot", "bpf", "ptrace"} - {"ptrace"}
    clone3 = [r for r in prof["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]


def test_sys_admin_unlocks_mount_in_the_profile() -> None:
    prof = seccomp.to_oci(seccomp.default_profile(), [*b.DEFAULT_CAPS, "CAP_SYS_ADMIN"])
    assert any("mount" in r["names"] for r in prof["syscalls"])
    assert not any(r["names"] == ["clone3"] for r in prof["syscalls"])


def test_custom_and_unconfined_seccomp(tmp_path: Path) -> None:
    assert b.resolve_seccomp(svc(security_opt=["seccomp=unconfined"]), b.DEFAULT_CAPS) is None
    p = tmp_path / "p.json"
    p.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}')
    prof = b.resolve_seccomp(svc(security_opt=[f"seccomp={p}"]), b.DEFAULT_CAPS)
    assert prof == {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}
    p.write_text("{nope")
    with pytest.raises(RuntimeFailure, match="not valid JSON"):  # the profile is a file on the node
        b.resolve_seccomp(svc(security_opt=[f"seccomp={p}"]), b.DEFAULT_CAPS)


def test_sysctls_only_namespaced(tmp_path: Path) -> None:
    ok = svc(sysctls={"net.ipv4.ip_forward": "1", "kernel.shmmax": "5", "fs.mqueue.msg_max": "9"})
    doc = b.build_config(ok, {"Cmd": ["x"]}, b.BundleOptions(container_id="c", image="i", rootfs=_rootfs(tmp_path)))
    assert doc["linux"]["sysctl"]["net.ipv4.ip_forward"] == "1"
    [swappiness] = refused("sysctls: {vm.swappiness: 1}")
    assert swappiness.startswith("services.web.sysctls.vm.swappiness: not a namespaced sysctl")
    [host] = refused("network_mode: host\nsysctls: {net.core.somaxconn: 1}")
    assert "host's network" in host


def test_ulimits_clamped_to_host_hard_limit() -> None:
    lims = b.resolve_rlimits(svc(ulimits={"nofile": {"soft": 1048576, "hard": 1048576}, "NPROC": {"soft": 10}}),
                             hard_limit=lambda res: 20000)  # fmt: skip
    assert lims == [{"type": "RLIMIT_NOFILE", "hard": 20000, "soft": 20000},
                    {"type": "RLIMIT_NPROC", "hard": 10, "soft": 10}]  # fmt: skip
    [files] = refused("ulimits: {files: {soft: 1}}")
    assert files.startswith("services.web.ulimits.files: unknown limit")
    assert refused("ulimits: {nofile: {soft: 5, hard: 2}}") == [
        "services.web.ulimits.nofile: soft limit 5 is above the hard limit 2"
    ]


def test_resources_map_to_oci() -> None:
    res = {"cpu": 0.5, "cpu_shares": 512, "cpuset": "0", "memory": "64Mi", "memory_reservation": "32Mi"}
    r = b.resolve_resources(svc(resources={**res, "memory_swap": "128Mi", "pids_limit": 20}))
    assert r["cpu"] == {"period": 100000, "quota": 50000, "shares": 512, "cpus": "0"}
    assert r["memory"] == {"limit": 64 << 20, "reservation": 32 << 20, "swap": 128 << 20}
    assert r["pids"] == {"limit": 20}
    assert any(p.startswith("services.web.resources.memory:") for p in refused("resources: {memory: lots}"))
    assert refused("resources: {memory: 1Mi}") == [
        "services.web.resources.memory: '1Mi': the minimum is 4Mi (the kernel needs more)"
    ]


def test_namespace_modes() -> None:
    types = [n["type"] for n in b.resolve_namespaces(svc(), None)]
    assert types == ["mount", "uts", "pid", "ipc", "network"]
    host = b.resolve_namespaces(svc(pid_mode="host", network_mode="host"), None)
    assert [n["type"] for n in host] == ["mount", "uts", "ipc"]
    joined = b.resolve_namespaces(svc(network_mode="container:db-rep-1"), lambda c, k: f"/proc/1/ns/{k}-{c}")
    assert {"type": "network", "path": "/proc/1/ns/net-db-rep-1"} in joined
    [weird] = refused("pid_mode: weird")
    assert weird.startswith("services.web.pid_mode: 'weird'")


def test_stop_signal_spec_then_image_then_term() -> None:
    assert b.stop_signal(svc(stop_signal="quit"), {}) == "SIGQUIT"
    assert b.stop_signal(svc(), {"StopSignal": "SIGINT"}) == "SIGINT"
    assert b.stop_signal(svc(stop_signal="15"), {}) == "SIGTERM"
    assert refused("stop_signal: SIGNOPE") == ["services.web.stop_signal: 'SIGNOPE': unknown signal"]


def _rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (tmp_path / "etc/group").write_text("root:x:0:\nstaff:x:50:app\napp:x:1001:\nwheel:x:10:\n")
    return tmp_path


def test_user_resolution_in_the_image_files(tmp_path: Path) -> None:
    root = _rootfs(tmp_path)
    u = resolve_user(root, "app", image="img")
    assert (u.uid, u.gid, u.additional_gids, u.home) == (1000, 1001, (50,), "/home/app")
    assert resolve_user(root, "app:wheel").gid == 10
    assert resolve_user(root, "4242:7").uid == 4242
    assert resolve_user(root, None).uid == 0
    assert resolve_user(root, "app", extra_groups=["wheel", "99"]).additional_gids == (50, 10, 99)


def test_unknown_user_names_user_and_image(tmp_path: Path) -> None:
    with pytest.raises(
        RuntimeFailure, match="unable to find user nginx: no matching entries in /etc/passwd of image x:1"
    ):
        resolve_user(_rootfs(tmp_path), "nginx", image="x:1")


def test_passwd_symlink_out_of_rootfs_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/passwd").symlink_to("/etc/passwd")
    with pytest.raises(RuntimeFailure, match="unable to find user root"):
        resolve_user(tmp_path, "root", image="evil")


def test_tmpfs_mode_yaml_decimal_read_as_octal() -> None:
    assert tmpfs_mode(1777) == "1777"
    with pytest.raises(ValueError):
        tmpfs_mode(999)
    assert refused("storage: [{type: tmpfs, target: /t, mode: 999}]") == [
        "services.web.storage[0].mode: 999: expected an octal file mode such as 1777 or 755"
    ]


def test_container_id_display_and_parse() -> None:
    assert str(ContainerId("web", 1)) == "web-rep-1"
    assert str(ContainerId("my-api", 2, "canary", 7)) == "my-api-canary-2-on-7"
    for cid in (ContainerId("web", 1), ContainerId("my-api", 2, "canary", 7), ContainerId("a-rep-b", 3)):
        assert ContainerId.parse(str(cid)) == cid
    with pytest.raises(UsageError):
        ContainerId.parse("nonsense")


def test_config_from_a_parsed_zlayer_yml(tmp_path: Path) -> None:
    from zlayer.spec import parse_spec

    dep = parse_spec(
        """
version: v1
deployment: demo
services:
  api:
    image: {name: "busybox:latest"}
    command: {args: ["-c", "echo hi"], workdir: /srv}
    env: {MODE: prod}
    user: app
    cap_drop: [NET_RAW]
    network_mode: host
    stop_signal: SIGINT
    stop_grace_period: 3s
    read_only_root_fs: true
    ulimits: {nofile: {soft: 1024, hard: 2048}}
    resources: {cpu: 1.5, memory: 128Mi, pids_limit: 64}
    storage:
      - {type: tmpfs, target: /scratch, size: "8Mi"}
"""
    )
    svc = dep.services["api"]
    doc = b.build_config(
        svc,
        {"config": {"Entrypoint": ["/bin/sh"], "Cmd": ["-l"], "Env": ["PATH=/bin"]}},
        b.BundleOptions(container_id="api-rep-1", image="busybox:latest", rootfs=_rootfs(tmp_path)),
    )
    proc = doc["process"]
    assert proc["args"] == ["/bin/sh", "-c", "echo hi"] and proc["cwd"] == "/srv"
    assert "MODE=prod" in proc["env"] and proc["user"] == {"uid": 1000, "gid": 1001, "additionalGids": [50]}
    assert "CAP_NET_RAW" not in proc["capabilities"]["effective"]
    assert proc["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 1024}]
    assert "network" not in [n["type"] for n in doc["linux"]["namespaces"]]
    assert doc["root"]["readonly"] is True
    assert doc["linux"]["resources"]["cpu"]["quota"] == 150000
    assert doc["linux"]["resources"]["memory"]["limit"] == 128 << 20
    assert doc["annotations"]["org.opencontainers.image.stopSignal"] == "SIGINT"
