"""A faithful local Genviral Partner API for tests, benchmarks and offline demos.

Modules: ``store`` (in-memory model and persistence), ``imaging`` (image sniffing and
enrichment text), ``validation`` (request schemas), ``faults`` (fault configuration and
draws), ``link`` (the rate storage and CDN bodies move at), ``astria`` (Astria's packs and tunes),
``server`` (HTTP routing and envelope), ``app`` (the :class:`Sandbox` object).
This module re-exports the public interface and the ``packsync sandbox`` entry point.
"""

from __future__ import annotations

from pathlib import Path

from .app import DEMO_TOKEN, Sandbox
from .astria import ASTRIA_DEMO_TOKEN
from .faults import Faults
from .imaging import solid_png
from .link import LinkRate
from .store import Account

__all__ = ["Sandbox", "Account", "Faults", "LinkRate", "DEMO_TOKEN", "ASTRIA_DEMO_TOKEN", "main_serve",
           "seed_astria_demo", "seed_astria_tune_demo"]

#: The demo Astria pack: a title and, per class, the colours of its example images.
ASTRIA_DEMO = ("Corporate Headshots", {"woman": [(200, 40, 40), (40, 160, 60), (30, 60, 200)],
                                       "man": [(230, 200, 30), (120, 40, 160)]})


def seed_astria_demo(sandbox: Sandbox) -> int:
    """Add the demo Astria pack (public, owned by the demo key); returns its id."""
    title, classes = ASTRIA_DEMO
    pack_id = sandbox.astria.add_pack(title, public=True)
    for cls, colours in classes.items():
        for colour in colours:
            sandbox.astria.add_image(pack_id, cls, solid_png(64, 64, colour))
    return pack_id


#: The demo Astria tune: a title, its class, and its prompts' texts with the colours of their images
#: (none: a prompt not generated yet).
ASTRIA_TUNE_DEMO = ("Me, studio portraits", "woman", [
    ("ohwx woman, studio portrait, soft light", [(220, 180, 160), (200, 160, 140)]),
    ("ohwx woman, on a beach at golden hour", [(240, 200, 90)]),
    ("ohwx woman, corporate headshot, grey backdrop", None),
])


def seed_astria_tune_demo(sandbox: Sandbox) -> int:
    """Add the demo Astria tune of the demo key (its last prompt not generated yet); returns its id."""
    title, name, prompts = ASTRIA_TUNE_DEMO
    tune_id = sandbox.astria.add_tune(title, name)
    for text, colours in prompts:
        images = None if colours is None else [solid_png(64, 64, colour) for colour in colours]
        sandbox.astria.add_prompt(tune_id, text, images)
    return tune_id


def main_serve(port: int, token: str | None, state_path: Path | None, latency_ms: float,
               fault_rate: float, upload_ttl_s: float, astria_token: str | None = None,
               link_rate: LinkRate | None = None) -> None:
    """Serve a sandbox in the foreground until interrupted (the ``packsync sandbox`` command)."""
    token = token or DEMO_TOKEN
    astria_token = astria_token or ASTRIA_DEMO_TOKEN
    sandbox = Sandbox(
        accounts={token: Account(scope="demo")},
        state_path=state_path,
        upload_ttl_s=upload_ttl_s,
        faults=Faults(latency_s=latency_ms / 1000.0, rate=fault_rate),
        link_rate=link_rate,
    )
    sandbox.start(port)
    sandbox.astria.users = {astria_token: 1}
    astria_pack = seed_astria_demo(sandbox)
    astria_tune = seed_astria_tune_demo(sandbox)
    try:
        # A key from the environment may be a real one: it is named, never printed.
        shown = "$GENVIRAL_TOKEN" if token != DEMO_TOKEN else token
        astria_shown = "$ASTRIA_API_KEY" if astria_token != ASTRIA_DEMO_TOKEN else astria_token
        print(f"sandbox listening on {sandbox.base_url} (token: {shown})", flush=True)
        print(f"Astria sandbox on {sandbox.astria_url} (key: {astria_shown}; demo pack {astria_pack}, "
              f"demo tune {astria_tune})", flush=True)
        sandbox.serve_forever(port)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
