"""Logging: structlog to stderr, readable on a terminal and JSON lines anywhere else.

Events are short lower-case sentences with key/value context, one summary event per unit of
work. A last processor scrubs registered secrets from every rendered line, so a token can never
reach a log even if some code path were careless enough to pass it in.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_secrets: set[str] = set()


def register_secret(secret: str) -> None:
    """Make sure ``secret`` never appears in a log line, whatever is logged."""
    if secret:
        _secrets.add(secret)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        text = text.replace(secret, "***")
    return text


def _scrub(_logger: Any, _method: str, rendered: Any) -> Any:
    return redact(rendered)


def _clear_line(_logger: Any, _method: str, rendered: Any) -> Any:
    """On a terminal, start each event on a cleared line: the progress display may be on it."""
    return "\r\x1b[2K" + rendered


def configure(verbose: bool = False, *, tty: bool | None = None) -> None:
    """Set up structlog for a command: debug events only with ``-v``; console or JSON renderer."""
    tty = sys.stderr.isatty() if tty is None else tty
    renderer: Any = structlog.dev.ConsoleRenderer(colors=True) if tty else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info if not tty else structlog.dev.set_exc_info,
            renderer,
            _scrub,
            *([_clear_line] if tty else []),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if verbose else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # httpx logs every request at INFO through the standard library; only show it with -v.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)


def get_logger(**context: Any) -> Any:
    return structlog.get_logger("packsync", **context)
