"""Oktorus SFU: a WebRTC selective forwarding unit.

The media server: forwarding core, rooms, peers, configuration and the command line
(``python -m sfu serve`` / ``python -m sfu token``). Signalling lives in :mod:`signaling`,
consent tokens and the ledger in :mod:`consent`, the consent-gated recorder in :mod:`recorder`
and the benchmark suite in :mod:`bench`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
