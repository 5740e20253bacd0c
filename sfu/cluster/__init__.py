"""Several nodes sharing one Redis: node registry, room placement with fencing epochs.

* :mod:`sfu.cluster.placement`: the seam the join path asks "which node hosts this room?"
  (:class:`RoomPlacement`), with the single-node :class:`LocalPlacement`.
* :mod:`sfu.cluster.state`: the Redis keys and atomic scripts (claims, heartbeats, listings).
* :mod:`sfu.cluster.node`: :class:`ClusterNode`, this node's heartbeat, claims and evictions.
"""

from sfu.cluster.placement import ClusterUnavailable, LocalPlacement, Placement, RoomPlacement

__all__ = ["ClusterUnavailable", "LocalPlacement", "Placement", "RoomPlacement"]
