"""Ring cache of raw RTP packets, to answer subscribers' NACKs.

Indexed by ``seq & mask`` with a power-of-two capacity: put and get are
O(1) and a put stores two references into preallocated lists, nothing more.
"""

from __future__ import annotations

__all__ = ["PacketCache"]

# 16-bit sequence numbers: a larger ring could only hold stale duplicates.
_MAX_CAPACITY = 1 << 16


class PacketCache:
    """The last ``capacity`` packets of one stream, keyed by sequence number.

    Sequence numbers are taken modulo 2**16, so RTP sequence numbers and
    unwrapped ones can be used interchangeably.
    """

    __slots__ = ("_mask", "_packets", "_seqs")

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        size = min(_MAX_CAPACITY, 1 << (capacity - 1).bit_length())
        self._mask = size - 1
        # -1 marks an empty slot: no real sequence number matches it.
        self._seqs: list[int] = [-1] * size
        self._packets: list[bytes | None] = [None] * size

    @property
    def capacity(self) -> int:
        return self._mask + 1

    def put(self, seq: int, packet: bytes) -> None:
        i = seq & self._mask
        self._seqs[i] = seq & 0xFFFF
        self._packets[i] = packet

    def get(self, seq: int) -> bytes | None:
        """The packet with ``seq``, None if never stored or overwritten since."""
        i = seq & self._mask
        if self._seqs[i] != seq & 0xFFFF:
            return None
        return self._packets[i]

    def clear(self) -> None:
        size = self._mask + 1
        self._seqs[:] = [-1] * size
        self._packets[:] = [None] * size

    def __len__(self) -> int:
        # O(capacity) but in C; kept off put() so put stays two stores.
        return len(self._packets) - self._packets.count(None)
