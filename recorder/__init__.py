"""Recorder: the consent-gated recorder.

A consumer-like sink attached to a participant's producers only after that participant's
consent check passes; remuxes (never transcodes) to WebM/Matroska with PyAV, one file per
participant, encrypted at rest (per-recording data key, chunked AES-256-GCM), with export and
erasure (crypto-shredding).

* :mod:`recorder.store`: the entry point (create under consent, list, read back, erase).
* :mod:`recorder.sink`: what producers feed (never blocks the loop); a worker thread per file.
* :mod:`recorder.depacketize`, :mod:`recorder.bitstream`, :mod:`recorder.remux`: RTP to frames
  to a container, without codecs.
* :mod:`recorder.crypto`: keys and the encrypted file format; :mod:`recorder.manifest`: the
  signed description of each file. :mod:`recorder.synthetic`: real RTP for tests and benchmarks.
"""
