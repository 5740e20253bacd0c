"""SRTP for pipes between nodes: AEAD_AES_256_GCM, one random key per room span and direction.

A pipe between two workers of one node is loopback UDP and carries raw RTP; a pipe between
two nodes crosses a network, so each packet is protected with libsrtp (pylibsrtp's public
``Session``/``Policy``, driven through :class:`sfu.aiortc_bridge.FastSrtp` for the
allocation-free calls). The home node draws both keys and writes them into Redis beside the
room's claim (:meth:`sfu.cluster.state.ClusterState.write_span`); the spill node reads them.

``allow_repeat_tx``: a NACKed packet is re-sent with its original sequence number. The
replay window holds 16384 packets, so a late re-send is not taken for a replay.
"""

from __future__ import annotations

import secrets

import pylibsrtp

from sfu.aiortc_bridge import FastSrtp

__all__ = ["KEY_BYTES", "PipeCrypto", "new_key"]

PROFILE = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_256_GCM
KEY_BYTES = 32 + 12  # AES-256 key + 96-bit salt (RFC 7714)
REPLAY_WINDOW = 0x4000  # packets; libsrtp accepts 64..0x7FFF


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _session(key: bytes, ssrc_type: int) -> FastSrtp:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a pipe key has {KEY_BYTES} bytes, not {len(key)}")
    policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=PROFILE)
    policy.allow_repeat_tx = True
    policy.window_size = REPLAY_WINDOW
    return FastSrtp(pylibsrtp.Session(policy))


class PipeCrypto:
    """Both directions of one pipe end: ``send_key`` protects, ``receive_key`` checks."""

    __slots__ = ("_rx", "_tx", "auth_failures")

    def __init__(self, send_key: bytes, receive_key: bytes) -> None:
        self._tx = _session(send_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._rx = _session(receive_key, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self.auth_failures = 0  # forged, replayed or wrongly keyed datagrams dropped

    def protect(self, packet: bytes) -> bytes | None:
        return self._tx.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes | None:
        return self._tx.protect_rtcp(packet)

    def unprotect(self, packet: bytes) -> bytes | None:
        plain = self._rx.unprotect(packet)
        if plain is None:
            self.auth_failures += 1
        return plain

    def unprotect_rtcp(self, packet: bytes) -> bytes | None:
        plain = self._rx.unprotect_rtcp(packet)
        if plain is None:
            self.auth_failures += 1
        return plain
