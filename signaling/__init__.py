"""Signalling: the aiohttp application of protocol v1.

WebSocket signalling at ``/v1/signal``, the JSON HTTP API (``/v1/sessions``, recordings,
subjects, nodes, rooms, health and metrics), the static browser client, and access tokens
(:mod:`signaling.access`).
"""
