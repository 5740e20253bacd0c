"""Opaque identifiers for participants, tracks and sessions."""

from __future__ import annotations

import secrets

__all__ = ["new_id"]


def new_id(prefix: str) -> str:
    """``PREFIX_`` + 12 random hex digits: unguessable enough, short enough to log."""
    return f"{prefix}_{secrets.token_hex(6)}"
