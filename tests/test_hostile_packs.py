"""Hostile pack names and pack races against the sandbox: names the server stores otherwise than asked
(trimmed, counted in UTF-16), two first runs creating one pack at the same moment, and two subfolders
swapping their names. Each test failed before its fix."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import TOKEN, Env, image, write
from helpers import StartDaemon, wait_until

from packsync.errors import ExitCode
from packsync.sandbox import Sandbox

UPLOADS = (("POST", "/files"), ("PUT", "storage"), ("POST", "/packs/{id}/images"),
           ("DELETE", "/packs/{id}/images/{image_id}"), ("POST", "/packs"))


def packs(env: Env) -> dict[str, int]:
    """Pack name → image count, for the sandbox's packs (a name twice: the count of the last)."""
    return {p["name"]: len(p["images"]) for p in env.sandbox.packs()}


def names(env: Env) -> list[str]:
    return sorted(p["name"] for p in env.sandbox.packs())


def uploads(env: Env) -> dict[str, int]:
    calls = env.sandbox.calls
    return {f"{m} {r}": calls[(m, r)] for m, r in UPLOADS if calls[(m, r)]}


def lose_state(env: Env) -> None:
    for path in env.state_path.parent.glob("state.db*"):
        path.unlink()


# -- names as the server stores them ----------------------------------------------------------------

def test_the_sandbox_trims_a_pack_s_name_and_counts_utf16_units(sandbox: Sandbox) -> None:
    """What the vendor's JavaScript schema does, so that the tests below test something real."""
    import httpx2

    api = httpx2.Client(base_url=sandbox.base_url, headers={"Authorization": f"Bearer {TOKEN}"})
    created = api.post("/packs", json={"name": "\u00a0 Brand Assets \n"}).json()
    assert created["data"]["name"] == "Brand Assets"
    assert api.post("/packs", json={"name": " \t "}).status_code == 422
    assert api.post("/packs", json={"name": "😀" * 61}).status_code == 422, "122 UTF-16 units"
    assert api.post("/packs", json={"name": "😀" * 60}).status_code == 201
    renamed = api.patch(f"/packs/{created['data']['id']}", json={"name": " Renamed "}).json()
    assert renamed["data"]["name"] == "Renamed"


def test_a_pack_name_with_spaces_around_it_is_found_again_after_the_state_is_lost(env: Env) -> None:
    folder = env.map("assets", pack=" Brand Assets ")
    write(folder / "a.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    lose_state(env)
    env.sandbox.reset_calls()

    done = env.cli("run", "--no-wait")

    assert done.returncode == 0, done.stdout + done.stderr
    assert names(env) == ["Brand Assets"], "no second pack"
    assert packs(env) == {"Brand Assets": 1}
    assert uploads(env) == {}, "the image is adopted, not added again"


def test_a_subfolder_with_spaces_around_its_name_is_found_again_after_the_state_is_lost(env: Env) -> None:
    root = env.map("clients", packs_from="subfolders")
    write(root / " lead" / "a.png", image())
    write(root / "tail " / "b.png", image())
    assert env.cli("run", "--no-wait").returncode == 0
    lose_state(env)

    done = env.cli("run", "--no-wait")

    assert done.returncode == 0, done.stdout + done.stderr
    assert names(env) == ["lead", "tail"]
    assert packs(env) == {"lead": 1, "tail": 1}


def test_a_subfolder_named_only_spaces_is_skipped_with_a_reason(env: Env) -> None:
    root = env.map("clients", packs_from="subfolders")
    write(root / "   " / "a.png", image())
    write(root / "Acme" / "b.png", image())

    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.SOME_FAILED, done.stdout + done.stderr  # (skipped: rename it)
    assert "its name is only spaces" in done.stdout
    assert names(env) == ["Acme"]


def test_two_subfolders_whose_names_differ_by_spaces_share_no_pack(env: Env) -> None:
    root = env.map("clients", packs_from="subfolders")
    write(root / "Acme" / "a.png", image())
    env.sync()
    write(root / " Acme" / "b.png", image())  # sorts first; the server would name its pack "Acme" too

    done = env.cli("run", "--no-wait")

    assert "which another mapping syncs into" in done.stdout
    assert packs(env) == {"Acme": 1}, "Acme's pack keeps Acme's image, and only it"


def test_a_subfolder_name_too_long_in_utf16_units_is_cut_to_fit(env: Env) -> None:
    """63 emoji are 252 bytes (a valid file name) and 126 UTF-16 units (more than the 120 a name may have)."""
    root = env.map("clients", packs_from="subfolders")
    write(root / ("😀" * 63) / "a.png", image())

    done = env.cli("run", "--no-wait")

    assert done.returncode == 0, done.stdout + done.stderr
    assert packs(env) == {"😀" * 60: 1}
    lose_state(env)
    assert env.cli("run", "--no-wait").returncode == 0
    assert packs(env) == {"😀" * 60: 1} and len(env.sandbox.packs()) == 1


def test_a_pack_name_of_spaces_in_the_config_is_an_error_naming_the_key(env: Env) -> None:
    env.map("assets", pack="   ")

    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
    assert "mappings[0].pack" in done.stderr and "Traceback" not in done.stderr
    assert env.sandbox.packs() == []


def test_a_pack_name_too_long_in_utf16_units_is_an_error_naming_the_key(env: Env) -> None:
    env.map("assets", pack="😀" * 61)

    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
    assert "mappings[0].pack" in done.stderr and "120" in done.stderr


def test_two_config_names_the_server_stores_alike_are_one_pack(env: Env) -> None:
    env.map("a", pack="Brand")
    env.map("b", pack="Brand ")

    done = env.cli("run", "--no-wait")

    assert done.returncode == ExitCode.USAGE, done.stdout + done.stderr
    assert "mappings[1].pack: mappings[0] already syncs into that pack" in done.stderr


# -- two first runs at once -------------------------------------------------------------------------

def _machine(tmp_path: Path, sandbox: Sandbox, name: str, files: dict[str, bytes]) -> Env:
    """Another machine: its own config, state and copy of the folder, the same sandbox."""
    env = Env(tmp_path / name, sandbox)
    folder = env.map("photos", pack="Team")
    for file, data in files.items():
        write(folder / file, data)
    return env


def _start_run(env: Env) -> subprocess.Popen[str]:
    environ = {**{k: v for k, v in os.environ.items() if k != "GENVIRAL_TOKEN"}, "GENVIRAL_TOKEN": TOKEN}
    return subprocess.Popen([sys.executable, "-m", "packsync", "-c", str(env.config_path), "run", "--no-wait"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)


def _contents(env: Env, pack: dict[str, Any]) -> list[str]:
    import httpx2

    return sorted(hashlib.sha256(httpx2.get(i["url"]).content).hexdigest() for i in pack["images"])


def test_two_first_runs_at_the_same_moment_leave_one_pack_holding_each_image_once(
        tmp_path: Path, sandbox: Sandbox) -> None:
    files = {f"{n}.png": image() for n in range(3)}
    one, two = _machine(tmp_path, sandbox, "one", files), _machine(tmp_path, sandbox, "two", files)
    # Both creations are held until both arrived: each process has looked for the pack and found none.
    sandbox.gather("POST", "/packs", count=2)

    runs = [_start_run(one), _start_run(two)]
    outputs = [run.communicate(timeout=60) for run in runs]

    assert sandbox.calls[("POST", "/packs")] == 2, "both created a pack"
    (pack,) = [p for p in sandbox.packs() if p["name"] == "Team"]
    assert _contents(one, pack) == sorted(hashlib.sha256(d).hexdigest() for d in files.values()), outputs
    assert sorted(run.returncode for run in runs) == [ExitCode.OK, ExitCode.SOME_FAILED], outputs
    assert "created at the same moment" in "".join(out for out, _err in outputs), "the one that gave way says so"
    # The one that gave way syncs into the pack that stayed, adopting what is there: nothing twice.
    for env in (one, two):
        assert env.sync().exit_code == ExitCode.OK
    (pack,) = sandbox.packs()
    assert len(pack["images"]) == len(files)


# -- two subfolders swapping names ------------------------------------------------------------------

def _clients(env: Env) -> Path:
    root = env.map("clients", packs_from="subfolders")
    for client in ("Acme", "Bolt"):  # the same file names in both, other bytes
        for n in range(3):
            write(root / client / f"IMG_000{n}.png", image())
    write(root / "Cargo" / "IMG_0000.png", image())
    return root


def _swap(root: Path, a: str, b: str) -> None:
    (root / a).rename(root / "tmp")
    (root / b).rename(root / a)
    (root / "tmp").rename(root / b)


def _pack_contents(env: Env) -> dict[str, list[str]]:
    """Pack name → the URLs of its images, sorted."""
    return {p["name"]: sorted(i["url"] for i in p["images"]) for p in env.sandbox.packs()}


def test_swapping_two_subfolders_is_two_pack_renames_and_nothing_uploaded(env: Env) -> None:
    root = _clients(env)
    assert env.cli("run", "--no-wait").returncode == 0
    before = _pack_contents(env)
    env.sandbox.reset_calls()

    _swap(root, "Acme", "Bolt")
    preview = env.cli("run", "--dry-run")
    assert preview.returncode == 0 and preview.stdout.count("would rename its pack, nothing uploaded") == 2, \
        preview.stdout
    assert env.sandbox.mutating_calls() == 0
    done = env.cli("run", "--no-wait")

    assert done.returncode == 0, done.stdout + done.stderr
    assert uploads(env) == {}, "nothing uploaded, added or deleted"
    assert _pack_contents(env) == {"Acme": before["Bolt"], "Bolt": before["Acme"], "Cargo": before["Cargo"]}
    assert env.sandbox.calls[("PATCH", "/packs/{id}")] == 2
    again = env.cli("run", "--no-wait")
    assert again.returncode == 0 and uploads(env) == {} and env.sandbox.calls[("PATCH", "/packs/{id}")] == 2


def test_a_rotation_of_three_subfolders_is_three_pack_renames(env: Env) -> None:
    root = _clients(env)
    env.sync()
    before = _pack_contents(env)
    env.sandbox.reset_calls()

    (root / "Acme").rename(root / "tmp")
    (root / "Cargo").rename(root / "Acme")
    (root / "Bolt").rename(root / "Cargo")
    (root / "tmp").rename(root / "Bolt")
    assert env.sync().exit_code == ExitCode.OK

    assert uploads(env) == {}
    assert _pack_contents(env) == {"Acme": before["Cargo"], "Bolt": before["Acme"], "Cargo": before["Bolt"]}


def test_a_subfolder_renamed_onto_another_s_name_moved_away_is_two_renames(env: Env) -> None:
    root = _clients(env)
    env.sync()
    before = _pack_contents(env)
    env.sandbox.reset_calls()

    (root / "Bolt").rename(root / "Dash")
    (root / "Acme").rename(root / "Bolt")
    assert env.sync().exit_code == ExitCode.OK

    assert uploads(env) == {}
    assert _pack_contents(env) == {"Bolt": before["Acme"], "Dash": before["Bolt"], "Cargo": before["Cargo"]}


def test_the_daemon_sees_a_swap_as_two_pack_renames(daemon_env: Env, start: StartDaemon) -> None:
    root = _clients(daemon_env)
    daemon = start()
    wait_until(lambda: packs(daemon_env) == {"Acme": 3, "Bolt": 3, "Cargo": 1}, timeout=20, what="first sync")
    before = _pack_contents(daemon_env)
    daemon_env.sandbox.reset_calls()

    _swap(root, "Acme", "Bolt")

    wanted = {"Acme": before["Bolt"], "Bolt": before["Acme"], "Cargo": before["Cargo"]}
    wait_until(lambda: _pack_contents(daemon_env) == wanted, timeout=20, what="the packs renamed")
    assert uploads(daemon_env) == {}, daemon.output()[-3000:]
    assert "safety" not in daemon.output().lower()


def test_a_subfolder_whose_files_moved_away_while_it_holds_others_gets_a_pack_of_its_own(env: Env) -> None:
    root = _clients(env)
    env.sync()
    before = _pack_contents(env)
    (root / "Bolt").rename(root / "Dash")
    write(root / "Bolt" / "IMG_0000.png", image())  # a new Bolt, holding something else
    env.sandbox.reset_calls()

    done = env.cli("run", "--no-wait")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Bolt: its files are in Dash now" in done.stdout
    assert _pack_contents(env)["Dash"] == before["Bolt"] and "Bolt" not in _pack_contents(env)
    assert uploads(env) == {}
    assert env.sync().exit_code == ExitCode.OK
    assert packs(env) == {"Acme": 3, "Dash": 3, "Cargo": 1, "Bolt": 1}


def test_a_subfolder_whose_first_file_is_deleted_is_no_rename(env: Env) -> None:
    root = _clients(env)
    env.sync()
    (root / "Acme" / "IMG_0000.png").unlink()
    (root / "Bolt" / "IMG_0000.png").unlink()

    assert env.sync().exit_code == ExitCode.OK
    assert packs(env) == {"Acme": 2, "Bolt": 2, "Cargo": 1}
    assert env.sandbox.calls[("PATCH", "/packs/{id}")] == 0
