"""``python -m sfu``: see :mod:`sfu.cli`."""

from sfu.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
