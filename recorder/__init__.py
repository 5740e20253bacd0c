"""Recorder: the consent-gated recorder.

A consumer like any other subscriber, attached to a participant only after that participant's
consent check passes; remuxes (never transcodes) to WebM/Matroska with PyAV, one file per
participant, encrypted at rest (per-recording data key, chunked AES-256-GCM), with export and
erasure (crypto-shredding).

Placeholder: this package is built in a later issue.
"""
