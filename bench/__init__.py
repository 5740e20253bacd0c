"""Bench: the load generator and benchmark suite (``python -m bench``), its reports and plots.

Speed goals live here and are printed as figures; tests assert behaviour, not timings. Traffic
goes to loopback only.

Layout (grows into the full suite: one module per scenario, one adapter per target):

* ``__main__`` — the command line; named scenarios in ``SCENARIOS`` (today: ``fanout``).
* ``target`` — the :class:`~bench.target.Target` interface a scenario drives;
  ``server`` — our SFU as a child process implementing it.
* ``media`` — a cheap publisher: VP8/Opus encoded once with PyAV, replayed as packets.
* ``clients`` — a subscriber that counts RTP without decoding, and a decoding probe.
* ``monitor`` — the generator's own CPU share and event-loop lag (is *it* the limit?).
* ``fanout`` — the 1 → N scenario; ``report`` — Markdown and JSON output.
* ``procfs``, ``stats`` — pure helpers (``/proc`` parsing, percentiles, line fits).

Run: ``python -m bench fanout --subscribers 1,10 --duration 10 [--json PATH]``.
"""
