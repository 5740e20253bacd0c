"""Capture UDP datagrams on the loopback interface (an AF_PACKET socket: needs CAP_NET_RAW,
which the test machine's root has), to check what a pipe really puts on the wire."""

from __future__ import annotations

import socket
import struct
import time

__all__ = ["capture_udp"]

ETH_P_ALL = 0x0003
_ETH_HEADER = 14


def capture_udp(dst_port: int, seconds: float, limit: int = 200) -> list[bytes]:
    """UDP payloads sent to ``dst_port`` on lo during ``seconds`` (IPv4; at most ``limit``)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.bind(("lo", 0))
        sock.settimeout(0.2)
        found: list[bytes] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(found) < limit:
            try:
                frame, info = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if info[2] == socket.PACKET_OUTGOING:
                continue  # lo shows each datagram twice: keep the incoming copy
            ip = frame[_ETH_HEADER:]
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
                continue
            udp = ip[(ip[0] & 0x0F) * 4 :]
            _src, dst, length = struct.unpack_from("!HHH", udp)
            if dst == dst_port:
                found.append(bytes(udp[8:length]))
        return found
    finally:
        sock.close()
