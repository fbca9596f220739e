"""zlayer's userspace WireGuard against Debian's wireguard-go and against itself, in two network namespaces on a
veth: handshakes either way, ping and TCP both ways, a rekey, a peer that changes its endpoint, ``wg show``/``wg set``
over the UAPI socket; and what an attacker sends (replays, garbage, wrong keys, a handshake flood) dropped and
counted while the tunnel keeps working."""

from __future__ import annotations

import base64
import ipaddress
import os
import random
import socket
import struct
import threading
import time

import pytest

from tests.fixtures.overlay import Pair, ScriptedPeer, icmp_echo, in_netns, keypair, make_interface, wait_for

pytestmark = [pytest.mark.root, pytest.mark.peer, pytest.mark.slow]

REKEY_AFTER = 3.0  # our REKEY_AFTER_TIME, shortened so that a rekey happens within the test


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def write_key(pair: Pair, name: str, key: bytes) -> str:
    path = f"/tmp/{pair.a}-{name}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b64(key).encode() + b"\n")
    os.close(fd)
    pair.cleanups.append(lambda: os.unlink(path))
    return path


def test_zlayer_and_wireguard_go_handshake_carry_traffic_rekey_and_roam(overlay_pair: Pair) -> None:
    from zlayer.overlay import Timers, _wg

    assert _wg.__file__ == os.environ.get("ZLAYER_WG_SO", _wg.__file__)
    pair = overlay_pair
    z_priv, z_pub = keypair()
    g_priv, g_pub = keypair()
    ours = make_interface(pair, pair.a, "zlo-z1", 51820, "10.91.0.1/24", timers=Timers(rekey_after_time=REKEY_AFTER))
    pair.wireguard_go(pair.b, "zlo-g1")
    # both configured through their UAPI sockets by wg(8)
    pair.wg(pair.a, "set", "zlo-z1", "private-key", write_key(pair, "z", z_priv), "peer", b64(g_pub),
            "endpoint", f"{pair.addr[pair.b]}:51821", "allowed-ips", "10.91.0.2/32")  # fmt: skip
    pair.wg(pair.b, "set", "zlo-g1", "private-key", write_key(pair, "g", g_priv), "listen-port", "51821",
            "peer", b64(z_pub), "endpoint", f"{pair.addr[pair.a]}:51820", "allowed-ips", "10.91.0.1/32")  # fmt: skip
    pair.ip("-n", pair.b, "addr", "add", "10.91.0.2/24", "dev", "zlo-g1")
    pair.ip("-n", pair.b, "link", "set", "zlo-g1", "up")

    # zlayer initiates, then traffic both ways
    assert pair.ping(pair.a, "10.91.0.2")
    assert pair.ping(pair.b, "10.91.0.1")
    pair.tcp_both_ways(pair.b, pair.a, "10.91.0.2", 5301)
    pair.tcp_both_ways(pair.a, pair.b, "10.91.0.1", 5302)

    show = pair.wg(pair.a, "show", "zlo-z1")
    assert f"public key: {b64(z_pub)}" in show and f"peer: {b64(g_pub)}" in show
    assert f"endpoint: {pair.addr[pair.b]}:51821" in show and "allowed ips: 10.91.0.2/32" in show
    assert "latest handshake:" in show and "transfer:" in show
    (status,) = ours.peer_statuses()
    assert status.healthy and status.last_handshake_age is not None and status.rx_bytes > 20_000_000
    dump = pair.wg(pair.a, "show", "zlo-z1", "dump").splitlines()[1].split("\t")
    assert int(dump[4]) > 0 and int(dump[5]) > 20_000_000 and int(dump[6]) > 20_000_000  # handshake, rx, tx

    # rekey: past our (shortened) REKEY_AFTER_TIME, sending makes zlayer initiate a new handshake
    peer = ours.peers[g_pub]
    before = peer.handshakes
    first = pair.wg(pair.b, "show", "zlo-g1", "latest-handshakes").split()[1]
    deadline = time.monotonic() + 30
    while peer.handshakes == before and time.monotonic() < deadline:
        pair.ping(pair.a, "10.91.0.2", count=1)
    assert peer.handshakes > before, "no rekey"
    assert ours.handshake_stats["initiations"] >= 1
    assert pair.ping(pair.a, "10.91.0.2") and pair.ping(pair.b, "10.91.0.1")
    wait_for(lambda: pair.wg(pair.b, "show", "zlo-g1", "latest-handshakes").split()[1] != first, "wireguard-go rekey")

    # wireguard-go initiates: it forgets us and is told again, then sends first (zlayer is the responder)
    responses = ours.handshake_stats["responses"]
    pair.wg(pair.b, "set", "zlo-g1", "peer", b64(z_pub), "remove")
    pair.wg(pair.b, "set", "zlo-g1", "peer", b64(z_pub), "endpoint", f"{pair.addr[pair.a]}:51820",
            "allowed-ips", "10.91.0.1/32")  # fmt: skip
    assert pair.ping(pair.b, "10.91.0.1")
    assert ours.handshake_stats["responses"] > responses
    pair.tcp_both_ways(pair.a, pair.b, "10.91.0.1", 5304, size="5M")

    # roaming: wireguard-go moves to another port and address; its authenticated packets move our endpoint
    pair.ip("-n", pair.b, "addr", "add", "192.168.91.3/24", "dev", "zlo-vb")
    pair.wg(pair.a, "set", "zlo-z1", "peer", b64(g_pub), "endpoint", "192.168.91.3:51821")
    pair.wg(pair.b, "set", "zlo-g1", "listen-port", "51831")
    assert pair.ping(pair.b, "10.91.0.1")
    assert pair.wg(pair.a, "show", "zlo-z1", "endpoints").split()[1] == "192.168.91.2:51831"
    assert pair.ping(pair.a, "10.91.0.2")
    # and we move too (wg set listen-port over UAPI rebinds in our namespace, keeping the fwmark); wireguard-go
    # follows our packets
    pair.wg(pair.a, "set", "zlo-z1", "fwmark", "0x51", "listen-port", "51822")
    assert "fwmark: 0x51" in pair.wg(pair.a, "show", "zlo-z1")
    assert pair.ping(pair.a, "10.91.0.2")
    assert pair.wg(pair.b, "show", "zlo-g1", "endpoints").split()[1] == f"{pair.addr[pair.a]}:51822"
    assert pair.ping(pair.b, "10.91.0.1")
    stats = ours.device.stats()
    assert stats["drop_auth"] == 0 and stats["drop_replay"] == 0

    # wg set removes the peer: no more traffic, and wg show lists none
    pair.wg(pair.a, "set", "zlo-z1", "peer", b64(g_pub), "remove")
    assert "peer:" not in pair.wg(pair.a, "show", "zlo-z1")
    assert not pair.ping(pair.a, "10.91.0.2", count=1)


def test_zlayer_to_zlayer_with_offloads_and_hostile_input_dropped_and_counted(overlay_pair: Pair) -> None:
    pair = overlay_pair
    a_priv, a_pub = keypair()
    b_priv, b_pub = keypair()
    s_priv, s_pub = keypair()
    za = make_interface(pair, pair.a, "zlo-z2", 51840, "10.92.0.1/24", private_key=a_priv)
    zb = make_interface(pair, pair.b, "zlo-z3", 51841, "10.92.0.2/24", private_key=b_priv)
    pa = za.peer(b_pub)
    za.set_endpoint(pa, (pair.addr[pair.b], 51841))
    za.set_allowed_ips(pa, [ipaddress.ip_network("10.92.0.2/32")], replace=True)
    pair.wg(pair.b, "set", "zlo-z3", "peer", b64(a_pub), "endpoint", f"{pair.addr[pair.a]}:51840",
            "allowed-ips", "10.92.0.1/32", "persistent-keepalive", "1")  # fmt: skip
    assert pair.ping(pair.a, "10.92.0.2") and pair.ping(pair.b, "10.92.0.1")
    pair.tcp_both_ways(pair.b, pair.a, "10.92.0.2", 5303, size="64M")
    sa, sb = za.device.stats(), zb.device.stats()
    if sa["vnet_hdr"]:  # the kernel takes TUN offloads: TCP went through as 64 KiB segments
        assert sa["tso_reads"] > 0 and sb["tso_reads"] > 0
        assert sa["coalesced_writes"] > 0 and sb["coalesced_writes"] > 0
    assert sa["drop_auth"] == sa["drop_replay"] == sa["drop_malformed"] == 0
    # zb's persistent keepalive (1 s) reaches za while the tunnel is idle
    keepalives = sa["rx_keepalives"]
    wait_for(lambda: za.device.stats()["rx_keepalives"] > keepalives, "a persistent keepalive")

    # a scripted peer (known to za) handshakes, sends one ping inside the tunnel, then replays it
    ps = za.peer(s_pub)
    assert not za.peer_status(ps).healthy  # no handshake yet
    za.set_allowed_ips(ps, [ipaddress.ip_network("10.92.0.9/32")], replace=True)
    evil = ScriptedPeer(pair.b, 51899, s_priv)
    pair.cleanups.append(evil.close)
    to = (pair.addr[pair.a], 51840)
    evil.handshake(a_pub, to)
    packet = evil.data_packet(icmp_echo("10.92.0.9", "10.92.0.1"))
    before = za.device.stats()
    evil.sock.sendto(packet, to)
    wait_for(lambda: za.device.stats()["rx_data_packets"] > before["rx_data_packets"], "the scripted ping")
    for _ in range(5):
        evil.sock.sendto(packet, to)
    wait_for(lambda: za.device.stats()["drop_replay"] >= before["drop_replay"] + 5, "replays counted")
    assert za.device.stats()["rx_data_packets"] == before["rx_data_packets"] + 1

    # an inner source address outside the peer's allowed IPs
    evil.sock.sendto(evil.data_packet(icmp_echo("10.92.0.2", "10.92.0.1")), to)
    wait_for(lambda: za.device.stats()["drop_allowed_ips"] > before["drop_allowed_ips"], "spoofed source counted")

    # garbage: random bytes, truncated and altered data packets, unknown indices, a wrong key
    good = evil.data_packet(icmp_echo("10.92.0.9", "10.92.0.1", seq=2))
    flipped = bytearray(good)
    flipped[40] ^= 1
    rng = random.Random(14)
    junk = [bytes(flipped), good[:31], good[:16], b"\x04", b"", b"\x04\x01\x00\x00" + good[4:]]
    junk += [struct.pack("<II", 4, rng.getrandbits(32)) + os.urandom(rng.randint(8, 1500)) for _ in range(2000)]
    junk += [os.urandom(rng.randint(1, 1500)) for _ in range(2000)]
    junk += [bytes([t, 0, 0, 0]) + os.urandom(n - 4) for t, n in ((1, 148), (2, 92), (3, 64)) for _ in range(50)]
    for j in junk:
        evil.sock.sendto(j, to)
    wait_for(
        lambda: (
            sum(za.device.stats()[k] for k in ("drop_malformed", "drop_unknown_index", "drop_auth"))
            >= sum(before[k] for k in ("drop_malformed", "drop_unknown_index", "drop_auth")) + 4000
        ),
        "garbage counted",
    )
    assert za.device.stats()["drop_auth"] > before["drop_auth"]

    # a handshake flood with valid mac1 (anyone who knows our public key can make one): cookie replies under load,
    # and the real peer still gets through
    def initiation() -> bytes:
        other_priv, _ = keypair()
        me = evil.noise.Identity(other_priv)
        return evil.noise.create_initiation(me, a_pub, evil.noise._dh(me.key, a_pub), 1, None)[0]

    flood = [initiation() for _ in range(300)]
    for _ in range(4):
        for m in flood:
            evil.sock.sendto(m, to)
    wait_for(lambda: za.handshake_stats["cookie_replies_sent"] > 0, "cookie replies under load")
    wait_for(lambda: za.device.stats()["handshake_backlog"] == 0, "the flood worked off")
    assert pair.ping(pair.a, "10.92.0.2") and pair.ping(pair.b, "10.92.0.1")


def _flood(sock: socket.socket, to: tuple[str, int], msgs: list[bytes], stop: threading.Event) -> None:
    """Bursts of 600 initiations (each sent thrice: a copy costs the responder as much before mac2) every 50 ms, so
    that its handshake queue stays past the under-load mark."""
    while not stop.is_set():
        for m in msgs * 3:
            sock.sendto(m, to)
        time.sleep(0.05)


def test_cookie_replies_under_load_interoperate_with_wireguard_go_both_ways(overlay_pair: Pair) -> None:
    from zlayer.overlay import noise

    pair = overlay_pair
    z_priv, z_pub = keypair()
    g_priv, g_pub = keypair()
    ours = make_interface(pair, pair.a, "zlo-z4", 51850, "10.93.0.1/24", private_key=z_priv)
    pair.wireguard_go(pair.b, "zlo-g2")
    pair.wg(pair.a, "set", "zlo-z4", "peer", b64(g_pub), "endpoint", f"{pair.addr[pair.b]}:51851",
            "allowed-ips", "10.93.0.2/32")  # fmt: skip
    pair.wg(pair.b, "set", "zlo-g2", "private-key", write_key(pair, "g2", g_priv), "listen-port", "51851",
            "peer", b64(z_pub), "endpoint", f"{pair.addr[pair.a]}:51850", "allowed-ips", "10.93.0.1/32")  # fmt: skip
    pair.ip("-n", pair.b, "addr", "add", "10.93.0.2/24", "dev", "zlo-g2")
    pair.ip("-n", pair.b, "link", "set", "zlo-g2", "up")

    def initiations(to_public: bytes) -> list[bytes]:
        out = []
        for _ in range(200):  # strangers: valid mac1 (it needs only the public key), no cookie
            me = noise.Identity(noise.generate_private_key())
            out.append(noise.create_initiation(me, to_public, noise._dh(me.key, to_public), 1, None)[0])
        return out

    # zlayer under a flood: wireguard-go's initiation gets our cookie reply, and its retry (with mac2) gets through
    flooder = in_netns(pair.b, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    pair.cleanups.append(flooder.close)
    stop = threading.Event()
    pair.cleanups.append(stop.set)
    t = threading.Thread(target=_flood, args=(flooder, (pair.addr[pair.a], 51850), initiations(z_pub), stop))
    t.start()
    wait_for(lambda: ours.handshake_stats["cookie_replies_sent"] > 0, "zlayer under load")
    sent = ours.handshake_stats["cookie_replies_sent"]
    assert pair.ping(pair.b, "10.93.0.1", count=12)  # wireguard-go retries after REKEY_TIMEOUT
    assert ours.peers[g_pub].handshakes >= 1 and ours.handshake_stats["cookie_replies_sent"] > sent
    stop.set()
    t.join()

    # wireguard-go under a flood: zlayer's initiation gets its cookie reply, and zlayer's retry carries mac2
    pair.wg(pair.b, "set", "zlo-g2", "peer", b64(z_pub), "remove")
    pair.wg(pair.b, "set", "zlo-g2", "peer", b64(z_pub), "endpoint", f"{pair.addr[pair.a]}:51850",
            "allowed-ips", "10.93.0.1/32")  # fmt: skip
    ours.device.clear_sessions(ours.peers[g_pub].slot)
    stop = threading.Event()
    pair.cleanups.append(stop.set)
    t = threading.Thread(target=_flood, args=(flooder, (pair.addr[pair.b], 51851), initiations(g_pub), stop))
    t.start()
    time.sleep(0.5)
    assert pair.ping(pair.a, "10.93.0.2", count=12)
    assert ours.peers[g_pub].cookie is not None, "wireguard-go sent no cookie reply (was it under load?)"
    stop.set()
    t.join()


def test_sessions_expire_after_reject_after_time_and_come_back_on_demand(overlay_pair: Pair) -> None:
    from zlayer.overlay import Timers

    pair = overlay_pair
    a_priv, a_pub = keypair()
    b_priv, b_pub = keypair()
    timers = Timers(rekey_after_time=1.0, reject_after_time=2.5, keepalive_timeout=1.0, rekey_timeout=1.0)
    za = make_interface(pair, pair.a, "zlo-z5", 51860, "10.94.0.1/24", private_key=a_priv, timers=timers)
    zb = make_interface(pair, pair.b, "zlo-z6", 51861, "10.94.0.2/24", private_key=b_priv, timers=timers)
    for me, other, ns_peer, port, ip in ((za, b_pub, pair.b, 51861, "10.94.0.2/32"),
                                         (zb, a_pub, pair.a, 51860, "10.94.0.1/32")):  # fmt: skip
        peer = me.peer(other)
        me.set_endpoint(peer, (pair.addr[ns_peer], port))
        me.set_allowed_ips(peer, [ipaddress.ip_network(ip)], replace=True)
    # traffic across several REKEY_AFTER_TIMEs: the initiator keeps making new sessions, traffic keeps flowing
    assert pair.ping(pair.a, "10.94.0.2", count=5)
    assert za.peers[b_pub].handshakes >= 2
    # idle past REJECT_AFTER_TIME: the data path holds no session it may use
    slot = za.peers[b_pub].slot
    wait_for(lambda: not za.device.peer_info(slot)["has_current"], "the session to expire")
    assert not zb.device.peer_info(zb.peers[a_pub].slot)["has_current"]
    # and the next packet brings a new one
    assert pair.ping(pair.b, "10.94.0.1", count=2)
    assert zb.device.peer_info(zb.peers[a_pub].slot)["has_current"]
