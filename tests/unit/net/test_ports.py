"""Which port claims meet (issue 11, item 8): the rule the admission check of a deployment's ports applies."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from zlayer.errors import ConflictError
from zlayer.net.ports import PortClaim, admit


def claim(address: str = "0.0.0.0", port: int = 8080, protocol: str = "tcp", **kw: object) -> PortClaim:
    return PortClaim(str(kw.pop("owner", "deployment 'a'")), protocol, address, port, **kw)  # type: ignore[arg-type]


def test_claims_meet_on_the_same_transport_and_port_where_their_addresses_overlap() -> None:
    assert claim().meets(claim("127.0.0.1"))  # the wildcard overlaps every address
    assert claim("127.0.0.1").meets(claim("127.0.0.1"))
    assert not claim("127.0.0.1").meets(claim("10.0.0.1"))
    assert not claim().meets(claim(port=8081))
    assert not claim().meets(claim(protocol="udp"))


def test_http_routes_share_a_listener_unless_they_take_the_same_host_and_path_or_disagree_on_tls() -> None:
    web = claim(route=(False, "", "/"))
    assert web.meets(claim(route=(False, "", "/")))  # the same requests: one of them would get none
    assert not web.meets(claim(route=(False, "api.example", "/")))
    assert not web.meets(claim(route=(False, "", "/api")))
    assert web.meets(claim(route=(True, "api.example", "/")))  # one listener cannot be plain and TLS
    assert web.meets(claim())  # a TCP stream on an HTTP listener's port
    assert web.meets(claim("127.0.0.1", route=(False, "api.example", "/")))  # two listeners on overlapping addresses


def test_a_refusal_names_the_holder_and_the_field() -> None:
    held = [claim(owner="deployment 'shop' (service 'web', endpoint 'http')")]
    with pytest.raises(ConflictError) as e:
        admit([claim("127.0.0.1", where="services.api.endpoints[0].port")], held)
    assert str(e.value) == (
        "services.api.endpoints[0].port: tcp port 8080 on 127.0.0.1 is already taken by "
        "deployment 'shop' (service 'web', endpoint 'http')"
    )
    assert e.value.http_status == 409
    with pytest.raises(ConflictError, match="taken by deployment 'new'"):  # two claims of one request
        admit([claim(owner="deployment 'new'"), claim("127.0.0.1", owner="deployment 'new'")], [])


def test_a_port_another_program_listens_on_is_refused_naming_the_program() -> None:
    code = (
        "import socket,sys\ns=socket.socket();s.bind(('127.0.0.1',0));s.listen()\n"
        "print(s.getsockname()[1],flush=True)\nsys.stdin.read()"
    )
    other = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None
        port = int(other.stdout.readline())
        holder = rf"another program on this host \(pid {other.pid}, python"
        with pytest.raises(ConflictError, match=rf"tcp port {port} on 127.0.0.1 is already taken by {holder}"):
            admit([], [], [claim("127.0.0.1", port)])
    finally:
        other.kill()
        other.wait()
    admit([], [], [claim("127.0.0.1", port)])  # gone: free again


def test_a_port_this_process_still_holds_is_named_as_its_own() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ConflictError, match="a listener of this daemon that is still closing"):
            admit([], [], [claim("127.0.0.1", s.getsockname()[1])])
