"""``packsync demo``: a complete sync with zero set-up, against the built-in sandbox.

It makes sample images in a temporary folder, starts the sandbox in-process, writes a real
config file, syncs, changes the folder (a rename, a delete, a new photo carrying its location, stripped before
upload) and syncs again, mirrors
the sandbox's demo Astria pack into a Genviral pack and follows an image removed from it, mirrors the demo
Astria tune's generated images (each with its prompt's text) and follows a generation that finishes, then
shows the status table with the AI descriptions the sandbox generated.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

from packsync.app import sync_once
from packsync.config import load_config
from packsync.engine.sync import SyncOptions
from packsync.errors import ExitCode
from packsync.sandbox import ASTRIA_DEMO_TOKEN, Sandbox, seed_astria_demo, seed_astria_tune_demo
from packsync.sandbox.imaging import solid_png
from packsync.state.store import State
from packsync.views.progress import Progress
from packsync.views.status import read_status
from packsync.views.text import print_run, print_status

DEMO_TOKEN = "gva_sandbox_demo.secret"

SAMPLES = {
    "brand/logo.png": (64, 64, (220, 30, 40)),
    "brand/logos/mark-blue.png": (48, 48, (30, 60, 210)),
    "brand/backgrounds/sunset.png": (120, 60, (250, 140, 20)),
    "brand/backgrounds/forest.png": (120, 60, (20, 150, 50)),
    "brand/old/logo copy.png": (64, 64, (220, 30, 40)),
    "products/mug.png": (80, 100, (245, 245, 245)),
    "products/t-shirt.png": (90, 90, (120, 40, 160)),
}

CONFIG = """\
# Written by `packsync demo`: the same file a user writes (see config.example.toml).
[genviral]
base_url = "{base_url}"

[state]
path = "state.db"

[[mappings]]
path = "brand"
pack = "Brand Assets"

[[mappings]]
path = "products"
pack_id = "{products_pack}"
"""

ASTRIA_CONFIG = """
[astria]
base_url = "{astria_url}"
token_file = "astria.key"

[[mappings]]
astria_pack = {astria_pack}
pack = "Headshots"
"""

TUNE_CONFIG = """
[[mappings]]
astria_tune = {astria_tune}
pack = "My generations"
"""


def _photo_with_location(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A JPEG as a phone writes it: with the GPS position where it was taken (Amsterdam), which the default
    ``strip`` keeps from the pack."""
    import io

    from PIL import Image

    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Phone maker", "Phone model"
    exif.get_ifd(0x8825).update({1: "N", 2: (52.0, 22.0, 3.36), 3: "E", 4: (4.0, 53.0, 30.0)})
    out = io.BytesIO()
    Image.new("RGB", (width, height), rgb).save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def _say(text: str) -> None:
    sys.stdout.write(f"\n== {text}\n")
    sys.stdout.flush()


def run_demo(keep: Path | None = None) -> ExitCode:
    folder = keep or Path(tempfile.mkdtemp(prefix="packsync-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _demo(folder)
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _demo(folder: Path) -> ExitCode:
    for rel, (width, height, rgb) in SAMPLES.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(solid_png(width, height, rgb))

    with Sandbox(enrich_delays=(0.5, 1.0)) as sandbox:
        products = sandbox.create_pack("Product Shots", scope="demo")
        sandbox.add_uploaded(products, solid_png(40, 40, (130, 50, 170)), "added in the web app.png")
        config_path = folder / "config.toml"
        config_path.write_text(CONFIG.format(base_url=sandbox.base_url, products_pack=products), encoding="utf-8")
        config = load_config(config_path)
        options = SyncOptions(wait=True, wait_timeout_s=30)

        _say(f"Sandbox at {sandbox.base_url}; sample images and config in {folder}")
        _say("First sync: 7 files (one a duplicate) into two packs; the web app's image stays")
        report = asyncio.run(sync_once(config, DEMO_TOKEN, options, Progress()))
        print_run(report, sys.stdout)

        (folder / "brand/logos/mark-blue.png").rename(folder / "brand/mark-blue-renamed.png")
        (folder / "brand/backgrounds/forest.png").unlink()
        (folder / "products/cap.jpg").write_bytes(_photo_with_location(70, 40, (240, 220, 30)))
        sandbox.reset_calls()
        _say("Second sync after a rename (free), a delete and a new photo (its location is stripped before upload)")
        report = asyncio.run(sync_once(config, DEMO_TOKEN, options, Progress()))
        print_run(report, sys.stdout)
        calls = ", ".join(f"{method} {route} ×{count}" for (method, route), count in sorted(sandbox.calls.items()))
        sys.stdout.write(f"API calls: {calls}\n")

        astria_pack = seed_astria_demo(sandbox)
        key = folder / "astria.key"
        key.write_text(ASTRIA_DEMO_TOKEN, encoding="utf-8")
        key.chmod(0o600)
        with config_path.open("a", encoding="utf-8") as handle:
            handle.write(ASTRIA_CONFIG.format(astria_url=sandbox.astria_url, astria_pack=astria_pack))
        config = load_config(config_path)
        _say(f"An Astria pack as a source: astria:{astria_pack} mirrored into the Genviral pack 'Headshots'")
        report = asyncio.run(sync_once(config, DEMO_TOKEN, options, Progress()))
        print_run(report, sys.stdout)
        first = sandbox.astria.get_pack(1, astria_pack)
        assert first is not None
        sandbox.astria.remove_image(astria_pack, first["prompts_per_class"]["man"][0]["images"][0])
        _say("An image removed from the Astria pack: the mirror follows")
        report = asyncio.run(sync_once(config, DEMO_TOKEN, options, Progress()))
        print_run(report, sys.stdout)

        astria_tune = seed_astria_tune_demo(sandbox)
        with config_path.open("a", encoding="utf-8") as handle:
            handle.write(TUNE_CONFIG.format(astria_tune=astria_tune))
        config = load_config(config_path)
        _say(f"Your own Astria generations: astria-tune:{astria_tune} mirrored into 'My generations', each image "
             "with its prompt's text (Astria deletes them 30 days after training)")
        report = asyncio.run(sync_once(config, DEMO_TOKEN, options, Progress()))
        print_run(report, sys.stdout)
        prompts = sandbox.astria.tune_prompts(1, None, astria_tune, 0) or []
        pending = next(prompt["id"] for prompt in prompts if not prompt.get("images"))
        sandbox.astria.generate(astria_tune, pending, solid_png(64, 64, (120, 130, 140)))
        _say("A generation finished: the mirror follows")
        report = asyncio.run(sync_once(config, DEMO_TOKEN, options, Progress()))
        print_run(report, sys.stdout)

        _say("packsync status --files")
        state = State(config.state_path, readonly=True)
        try:
            print_status(read_status(config, state, files=True), sys.stdout)
        finally:
            state.close()
    return report.exit_code
