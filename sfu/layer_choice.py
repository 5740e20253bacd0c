"""Which simulcast layer a subscriber gets: a pure function of what it asked for and its link.

A subscriber asks (``track.settings``) for a quality, or says how large it renders the
video; its link budget comes from :mod:`sfu.bandwidth`. The layer forwarded is the best one
within both, among the layers the publisher is actually sending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["QUALITIES", "LayerInfo", "Preference", "choose_layer", "preferred_layer"]

QUALITIES = ("low", "medium", "high")
FIT_MARGIN = 0.9  # a layer fits a budget when it uses at most 90% of it


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """What is known of one layer (index order: lowest quality first)."""

    active: bool
    bitrate_bps: int
    width: int = 0  # 0: unknown
    height: int = 0


@dataclass(frozen=True, slots=True)
class Preference:
    """A subscriber's ``track.settings``: a quality, a rendered size, or neither (best)."""

    quality: str | None = None
    width: int | None = None
    height: int | None = None


def preferred_layer(layers: Sequence[LayerInfo], preference: Preference) -> int:
    """The layer asked for: by quality, else the smallest at least the rendered size."""
    top = len(layers) - 1
    if preference.quality is not None:
        wanted = QUALITIES.index(preference.quality)
        # Two layers: low and high; medium takes the upper one.
        return min(top, wanted) if top >= 2 or wanted == 0 else top
    if preference.width is not None and preference.height is not None:
        for index, layer in enumerate(layers):
            if layer.width >= preference.width and layer.height >= preference.height:
                return index
    return top


def choose_layer(
    layers: Sequence[LayerInfo],
    preferred: int,
    budget_bps: int | None,
    *,
    current: int = -1,
    favour_resolution: bool = False,
) -> int:
    """The layer to forward, or -1 when none fits (video waits, audio goes on).

    Among active layers up to ``preferred`` (the lowest active one above it if none is
    active below), the highest whose bitrate fits the budget (None: no limit). A screen
    share (``favour_resolution``) goes down at most one layer from the best candidate,
    then pauses: text at a quarter of its size is unreadable. The ``current`` layer
    keeps going up to the full budget, a new one needs headroom (no flapping at the edge).
    """
    candidates = [i for i, layer in enumerate(layers) if layer.active and i <= preferred]
    if not candidates:
        above = [i for i, layer in enumerate(layers) if layer.active]
        candidates = above[:1]
    if not candidates:
        return -1
    best = candidates[-1]
    if budget_bps is None:
        return best
    lowest = best - 1 if favour_resolution else 0
    for index in reversed(candidates):
        if index < lowest:
            break
        margin = 1.0 if index == current else FIT_MARGIN
        if layers[index].bitrate_bps <= budget_bps * margin:
            return index
    return -1
