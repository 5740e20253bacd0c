"""Several worker processes behind one signalling port (``serve --workers N|auto``).

- :mod:`sfu.workers.supervisor`: the public port, first-frame routing, /metrics, /v1/rooms;
- :mod:`sfu.workers.pool`: starts, watches, restarts the workers and polls their load;
- :mod:`sfu.workers.worker`: one worker (today's server on a private unix socket);
- :mod:`sfu.workers.placement`: which worker hosts a new room (pure, by load);
- :mod:`sfu.workers.relay`: one client's signalling frames to its room's worker and back;
- :mod:`sfu.workers.proxy`: plain HTTP (API, recordings, pages) to a worker;
- :mod:`sfu.workers.metrics_merge`: the workers' Prometheus texts as one.

See docs/architecture.md, "Process model".
"""
