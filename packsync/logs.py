"""Logging: one pipeline to stderr, readable on a terminal and JSON lines anywhere else.

packsync's own events (structlog) and the records of libraries that log through the standard
``logging`` module (httpx, watchdog) meet in one handler whose ``ProcessorFormatter`` renders them
alike. Events are short lower-case sentences with key/value context, one summary event per unit of
work; context that holds for a while (the mapping) is bound to the logger, not repeated. A last
processor scrubs registered secrets from every rendered line, so a token can never reach a log even
if some code path — or some library — were careless enough to pass it in.
"""

from __future__ import annotations

import logging
import re
import sys
import unicodedata
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger, Processor

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


#: A credential as a header or a parameter shows it: ``Bearer …``, ``token=…``, ``Authorization: Basic …``
#: (a proxy's ``Proxy-Authorization`` too).
_BEARER = re.compile(r"(?i)\b(bearer|token|authorization)([\"']?\s*[:=]?\s*[\"']?\s*)(?:(?:bearer|basic)\s+)?"
                     r"[\w.~+/=-]{8,}")


#: How much of a text from the network ``untrusted`` looks at: its start, more than any message shows.
WINDOW = 4000


def untrusted(text: str | bytes, limit: int = 300) -> str:
    """Text that came from the network (an error answer, a proxy's page), safe to store and print.

    Registered secrets and anything shaped like a credential (``Bearer …``, ``token=…``) are
    redacted — a proxy or a debug page may echo the Authorization header — control characters
    (terminal escapes, forged line breaks) become spaces, and the length is capped. Of a long text (or
    body, as bytes) only the first ``WINDOW`` characters are read, cut where no secret is cut in two:
    give it the whole text, since a text cut before it could end in the first part of a key.
    """
    if len(text) > WINDOW:
        head = text[:WINDOW]
        text = _cut(head.decode("utf-8", "replace") if isinstance(head, bytes) else head)
    elif isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}***", redact(text))
    text = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _cut(head: str) -> str:
    """``head``, the start of a longer text, less any end that may be the first part of a secret."""
    cut = True
    while cut:
        cut = False
        for secret in _secrets:
            part = next((n for n in range(min(len(secret) - 1, len(head)), 0, -1) if head.endswith(secret[:n])), 0)
            if part:
                head, cut = head[:-part], True
    return head


def _scrub(_logger: Any, _method: str, rendered: Any) -> Any:
    return redact(rendered)


def _clear_line(_logger: Any, _method: str, rendered: Any) -> Any:
    """On a terminal, start each event on a cleared line: the progress display may be on it."""
    return "\r\x1b[2K" + rendered


def configure(verbose: bool = False, *, tty: bool | None = None) -> None:
    """Set up logging for a command: debug events only with ``-v``; console or JSON rendering."""
    tty = sys.stderr.isatty() if tty is None else tty
    level = logging.DEBUG if verbose else logging.INFO
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        # a person at a terminal reads their own clock; JSON lines, for machines, stay UTC
        structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S" if tty else "iso", utc=not tty),
    ]
    renderer: Processor = structlog.dev.ConsoleRenderer(colors=True) if tty else structlog.processors.JSONRenderer()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if tty else [structlog.processors.format_exc_info]),
            renderer,
            _scrub,
            *([_clear_line] if tty else []),
        ]))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,  # a logger is built once, not at every event
    )


def get_logger(**context: Any) -> FilteringBoundLogger:
    """packsync's logger, with ``context`` bound to every event it logs."""
    logger: FilteringBoundLogger = structlog.get_logger("packsync", **context)
    return logger
