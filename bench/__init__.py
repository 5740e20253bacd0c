"""Bench: the load generator and benchmark suite (``python -m bench``), its reports and plots.

Speed goals live here and are printed as figures; tests assert behaviour, not timings.
Traffic goes to loopback, or to private addresses inside a network namespace the bench
creates itself (for Janus), never anywhere else.

Layout:

* ``__main__`` — the command line; named scenarios in ``SCENARIOS``: ``fanout``,
  ``meeting``, ``audio-rooms``, ``join-storm``, ``micro`` and ``all``.
* ``target`` — the :class:`~bench.target.Target` interface a scenario drives (start/stop,
  rooms, joins with taps, CPU/RSS/counters); ``server`` — our SFU as a child process
  (protocol v1); ``janus`` — Janus VideoRoom (Debian's package) in ``netns`` — the bench's
  own network namespace.
* ``media`` — a cheap publisher: VP8/Opus encoded once with PyAV, replayed as packets.
* ``latency`` — publisher/subscriber taps that match payloads on one clock: SFU-added
  latency, loss, first media and first keyframe.
* ``scenario`` — one measured run of a layout of rooms on one target; ``fanout`` — the
  fanout/meeting/audio-rooms layouts, marginal cost; ``joinstorm`` — joins at a rate.
* ``monitor`` — the generator's own CPU share and event-loop lag (is *it* the limit?).
* ``report`` — Markdown and JSON; ``plots`` — PNG (matplotlib, optional).
* ``micro`` — micro-benchmarks of the hot path (``python -m bench micro``).
* ``clients`` — the older protocol-v1-only counting subscriber and decoding probe.
* ``procfs``, ``stats`` — pure helpers (``/proc`` parsing, percentiles, line fits).

Run: ``python -m bench all`` or e.g. ``python -m bench fanout --subscribers 1,20,40``.
"""
