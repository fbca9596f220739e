"""Hostile exec and scale requests against a live daemon running a real container (the fuzz run of the API's
bodies meets only unknown names): a command with a NUL byte, an empty program, an argument list past the kernel's
limits, a program the container does not have are refused (400) saying why; a replica that does not exist and a
scale far past reason answer a clear 4xx; the daemon and its container run on."""

from __future__ import annotations

import pytest

from tests.fixtures.daemon_live import LiveNode, web_spec
from tests.fixtures.daemon_node import unique

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployed(daemon_live: LiveNode) -> str:
    name = unique("hostexec")
    daemon_live.deploy(web_spec(name, 1))
    daemon_live.expect(name)
    return name


# (body, what the 400 says); a NUL was cut off by C silently ("/bin/ec\0ho" ran "/bin/ec", "a\0b" passed "a"), and an
# argument list past the kernel's limits answered 500 "OSError: [Errno 7] Argument list too long"
REFUSED = {
    "nul-in-program": ({"command": ["/bin/ec\x00ho", "x"]}, "command[0] holds a NUL byte (at 7)"),
    "nul-in-argument": ({"command": ["/bin/echo", "a\x00b"]}, "command[1] holds a NUL byte (at 1)"),
    "empty-program": ({"command": [""]}, "the program (command[0]) is empty"),
    "no-command": ({"command": []}, "at least 1 item"),
    "huge-argv": ({"command": ["/bin/true", *(["x" * 1000] * 5000)]}, "more than the 1048576 an exec may pass"),
    "huge-argument": ({"command": ["/bin/echo", "x" * (200 << 10)]}, "more than the 131071 one argument may have"),
    # the caller's mistake, not the node's: it answered 500 internal_error
    "missing-program": ({"command": ["/no/such/program"]}, "executable file not found: /no/such/program"),
}
ANSWERED = {
    "relative-climb": {"command": ["../../../../bin/sh", "-c", "true"]},
    "unknown-replica": {"command": ["/bin/true"], "replica": 99},
    "negative-replica": {"command": ["/bin/true"], "replica": -1},
}


def _runs_on(node: LiveNode, deployed: str, cid: str) -> None:
    assert node.proc is not None and node.proc.poll() is None
    after = node.containers(deployed, "web")[0]
    assert (after["id"], after["state"]) == (cid, "running"), after
    assert node.api("POST", f"/api/v1/containers/{cid}/exec", {"command": ["/bin/echo", "fine"]})["stdout"] == "fine\n"


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_exec_no_program_could_be_given_is_refused_saying_why(
    daemon_live: LiveNode, deployed: str, case: str
) -> None:
    node = daemon_live
    cid = node.containers(deployed, "web")[0]["id"]
    body, said = REFUSED[case]
    for path in (f"/api/v1/containers/{cid}/exec", f"/api/v1/deployments/{deployed}/services/web/exec"):
        status, answer = node.request("POST", path, body)
        assert status == 400 and said in str(answer), (path, status, answer)
    _runs_on(node, deployed, cid)


@pytest.mark.parametrize("case", sorted(ANSWERED))
def test_a_hostile_exec_is_a_clear_answer_and_the_container_runs_on(
    daemon_live: LiveNode, deployed: str, case: str
) -> None:
    node = daemon_live
    cid = node.containers(deployed, "web")[0]["id"]
    for path in (f"/api/v1/containers/{cid}/exec", f"/api/v1/deployments/{deployed}/services/web/exec"):
        status, answer = node.request("POST", path, ANSWERED[case])
        assert status < 500, (path, status, answer)
        if status >= 400:
            assert answer["code"] and answer["message"] and "Traceback" not in answer["message"], answer
    _runs_on(node, deployed, cid)


@pytest.mark.parametrize("replicas", [-1, 2**32, 10**30, "many", None])
def test_a_hostile_scale_is_a_clear_answer_and_changes_nothing(
    daemon_live: LiveNode, deployed: str, replicas: object
) -> None:
    node = daemon_live
    status, answer = node.request("POST", f"/api/v1/deployments/{deployed}/services/web/scale", {"replicas": replicas})
    assert 400 <= status < 500, (status, answer)
    assert [c["state"] for c in node.containers(deployed, "web")] == ["running"]
