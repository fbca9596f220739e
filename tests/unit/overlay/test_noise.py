"""The handshake's building blocks against published vectors, and both ends of a handshake and a cookie exchange."""

from __future__ import annotations

import struct

import pytest

from zlayer.overlay import noise


def test_hchacha20_matches_the_xchacha_draft_vector() -> None:
    # draft-irtf-cfrg-xchacha-03, section 2.2.1
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc"
    assert noise.hchacha20(key, nonce).hex() == expected


def test_tai64n_is_monotonic_and_labelled_from_1970_plus_2_62() -> None:
    a = noise.tai64n(1_700_000_000.5)
    b = noise.tai64n(1_700_000_001.5)
    assert a < b and len(a) == 12
    assert struct.unpack(">Q", a[:8])[0] == 0x400000000000000A + 1_700_000_000


def _pair() -> tuple[noise.Identity, noise.Identity]:
    return noise.Identity(noise.generate_private_key()), noise.Identity(noise.generate_private_key())


def test_initiation_and_response_give_both_sides_mirrored_keys() -> None:
    alice, bob = _pair()
    psk = bytes(range(32))
    msg, sent = noise.create_initiation(alice, bob.public, noise._dh(alice.key, bob.public), 11, None)
    assert len(msg) == noise.INITIATION_LEN and noise.mac1_ok(bob, msg) and not noise.mac1_ok(alice, msg)
    got = noise.consume_initiation(bob, msg)
    assert got.peer_public == alice.public and got.sender_index == 11
    reply, bob_keys = noise.create_response(got, psk, 22, None)
    assert len(reply) == noise.RESPONSE_LEN and noise.mac1_ok(alice, reply)
    alice_keys = noise.consume_response(alice, sent, psk, reply)
    assert (alice_keys.send, alice_keys.recv) == (bob_keys.recv, bob_keys.send)
    assert (alice_keys.remote_index, bob_keys.remote_index) == (22, 11)


def test_a_response_under_another_psk_or_altered_does_not_verify() -> None:
    alice, bob = _pair()
    msg, sent = noise.create_initiation(alice, bob.public, noise._dh(alice.key, bob.public), 1, None)
    reply, _ = noise.create_response(noise.consume_initiation(bob, msg), bytes(32), 2, None)
    with pytest.raises(noise.HandshakeError):
        noise.consume_response(alice, sent, b"\x01" * 32, reply)
    altered = bytearray(msg)
    altered[50] ^= 1
    with pytest.raises(noise.HandshakeError):
        noise.consume_initiation(bob, bytes(altered))


def test_a_cookie_reply_lets_the_initiator_pass_the_responders_mac2_check() -> None:
    alice, bob = _pair()
    checker = noise.CookieChecker(bob)
    msg, sent = noise.create_initiation(alice, bob.public, noise._dh(alice.key, bob.public), 5, None)
    assert not checker.mac2_ok(msg, "192.0.2.1", 4000)
    reply = checker.reply(msg, "192.0.2.1", 4000)
    assert len(reply) == noise.COOKIE_LEN and struct.unpack_from("<I", reply, 4)[0] == 5
    cookie = noise.consume_cookie_reply(bob.public, sent.mac1, reply)
    again, _ = noise.create_initiation(alice, bob.public, noise._dh(alice.key, bob.public), 6, cookie)
    assert checker.mac2_ok(again, "192.0.2.1", 4000)
    assert not checker.mac2_ok(again, "192.0.2.2", 4000)  # the cookie is bound to the sender's address
