"""A faithful local Genviral Partner API for tests, benchmarks and offline demos.

Modules: ``store`` (in-memory model and persistence), ``imaging`` (image sniffing and
enrichment text), ``validation`` (request schemas), ``faults`` (fault configuration and
draws), ``server`` (HTTP routing and envelope), ``app`` (the :class:`Sandbox` object).
This module re-exports the public interface and the ``packsync sandbox`` entry point.
"""

from __future__ import annotations

from pathlib import Path

from .app import DEMO_TOKEN, Sandbox
from .faults import Faults
from .store import Account

__all__ = ["Sandbox", "Account", "Faults", "DEMO_TOKEN", "main_serve"]


def main_serve(port: int, token: str | None, state_path: Path | None, latency_ms: float,
               fault_rate: float, upload_ttl_s: float) -> None:
    """Serve a sandbox in the foreground until interrupted (the ``packsync sandbox`` command)."""
    token = token or DEMO_TOKEN
    sandbox = Sandbox(
        accounts={token: Account(scope="demo")},
        state_path=state_path,
        upload_ttl_s=upload_ttl_s,
        faults=Faults(latency_s=latency_ms / 1000.0, rate=fault_rate),
    )
    sandbox.start(port)
    try:
        print(f"sandbox listening on {sandbox.base_url} (token: {token})", flush=True)
        sandbox.serve_forever(port)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
