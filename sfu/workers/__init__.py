"""Several worker processes behind one signalling port (``serve --workers N|auto``).

The supervisor (:mod:`sfu.workers.supervisor`) owns the public port and the worker processes;
each worker (:mod:`sfu.workers.worker`) is today's single-process server on a private unix
socket. :mod:`sfu.workers.placement` picks a new room's home worker by load;
:mod:`sfu.workers.relay` carries one client's signalling frames to its room's worker.
See docs/architecture.md, "Process model".
"""
