"""Structured logging: structlog for our code, the stdlib ``logging`` tree routed through it.

Call :func:`configure_logging` once at start-up (the CLI does). Elsewhere::

    log = structlog.get_logger(__name__)
    log.bind(room=room_id, participant=participant_id).info("participant.joined")

Output goes to stderr: JSON lines (one object per event: ``timestamp`` ISO-8601 UTC, ``level``,
``logger``, ``event`` and the bound keys) when stderr is not a TTY or ``fmt == "json"``, a coloured
console rendering when it is a TTY (``fmt == "auto"``) or ``fmt == "console"``. Context bound with
``structlog.contextvars.bind_contextvars`` is merged into every event. Records of stdlib loggers
(aiohttp, asyncio, ...) go through the same renderer; the chatty aiortc/aioice loggers are held at
WARNING unless the level asked for is higher. Never log on the media hot path.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

__all__ = ["QUIET_LOGGERS", "configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
_FORMATS = ("auto", "json", "console")

#: Third-party loggers kept at WARNING or above: they log per packet / per STUN check at INFO/DEBUG.
QUIET_LOGGERS = ("aiortc", "aioice", "pylibsrtp")

# Marks the handler we install so that a second configure_logging() replaces, not duplicates, it.
_HANDLER_NAME = "sfu.logs"


def _use_json(fmt: str, stream: TextIO) -> bool:
    if fmt == "json":
        return True
    if fmt == "console":
        return False
    isatty = getattr(stream, "isatty", None)
    return not (callable(isatty) and isatty())


def configure_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Configure structlog and stdlib logging for the whole process.

    ``level`` is one of debug/info/warning/error/critical, ``fmt`` one of auto/json/console.
    ``stream`` defaults to ``sys.stderr`` (tests pass a buffer). Safe to call more than once.
    """
    try:
        numeric = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None
    if fmt not in _FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    out = stream if stream is not None else sys.stderr

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: list[Processor]
    if _use_json(fmt, out):
        renderer = [
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            structlog.processors.JSONRenderer(),
        ]
    else:
        colors = bool(getattr(out, "isatty", lambda: False)())
        renderer = [structlog.dev.ConsoleRenderer(colors=colors)]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared[:2],
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared[2:],
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # Not cached: configure_logging() may run again (tests, reconfiguration) and loggers
        # created at import time must follow it.
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, numeric))
    logging.captureWarnings(True)


def get_logger(name: str, **initial: Any) -> structlog.stdlib.BoundLogger:
    """``structlog.get_logger(name)`` typed as a stdlib BoundLogger, optionally pre-bound."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name, **initial)
    return logger
