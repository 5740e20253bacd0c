"""``python -m sfu.workers``: one worker process, started by the supervisor (not by hand)."""

from sfu.workers.worker import main

if __name__ == "__main__":
    raise SystemExit(main())
