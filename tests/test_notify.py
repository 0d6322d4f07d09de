"""Notifications (``packsync/daemon/alerts.py``): what is told, once per episode, and that it arrives.

The decider is driven with a fake clock; the daemon sends through apprise's ``json://`` to an HTTP endpoint
this module runs, as any webhook receiver would get them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKEN, Env, image, write
from helpers import DaemonProcess, StartDaemon, StartHere, wait_until

from packsync.config import default_config_path, parse_config
from packsync.daemon.alerts import Alert, Alerts, Notifications, Notifier
from packsync.errors import ExitCode
from packsync.logs import register_secret
from packsync.sandbox import Account, Sandbox

# -- the decider -------------------------------------------------------------------------------------------


def events(alerts: list[Alert]) -> list[tuple[str, str | None]]:
    return [(a.event, a.label) for a in alerts]


def test_a_safety_stop_is_told_once_while_it_stands_and_its_end_once() -> None:
    alerts = Alerts(after_s=60)
    steps: list[tuple[str | None, list[tuple[str, str | None]]]] = [
        ("3 of 4 images would go", [("safety stop", "/p")]),
        ("3 of 4 images would go", []),
        ("4 of 4 images would go", []),  # the same stop, grown: still not news
        (None, [("safety stop cleared", "/p")]),
        (None, []),
        ("2 of 4 images would go", [("safety stop", "/p")]),  # a new stop after it cleared is a new event
    ]
    for reason, expected in steps:
        assert events(alerts.stop("/p", reason, 3)) == expected, reason


def test_the_stop_says_the_count_the_reason_and_the_command_that_approves() -> None:
    [told] = Alerts(after_s=60).stop("/home/me/My Pictures", "would delete 3 of 4 images (max_delete 50%)", 3)
    assert "3 deletes withheld" in told.body
    assert "would delete 3 of 4 images (max_delete 50%)" in told.body
    assert told.body.endswith("packsync allow-deletes '/home/me/My Pictures'")


def test_the_stop_names_the_config_when_the_daemon_runs_with_another_than_the_default() -> None:
    alerts = Alerts(after_s=60, config=Path("/etc/packsync/my pics.toml"))
    [told] = alerts.stop("/p", "would delete 3 of 4 images", 3)
    assert told.body.endswith("packsync --config '/etc/packsync/my pics.toml' allow-deletes /p")
    default = parse_config({"genviral": {"base_url": "http://127.0.0.1:9"}}, source=default_config_path())
    assert Notifications.open(default).alerts.config is None, "the default config needs no --config"


def test_a_stop_announced_before_a_restart_is_not_told_again() -> None:
    alerts = Alerts(after_s=60, stopped=["/p"])
    assert alerts.stop("/p", "3 of 4", 3) == []
    assert events(alerts.stop("/p", None, 0)) == [("safety stop cleared", "/p")]


def test_a_folder_failing_is_told_once_past_after_s_and_its_recovery_once() -> None:
    alerts = Alerts(after_s=10)
    clock: list[tuple[float, str | None, list[tuple[str, str | None]]]] = [
        (0, "folder missing", []),
        (5, "folder missing", []),
        (9.9, "pack gone", []),
        (10, "pack gone", [("failing", "/f")]),  # failing since 0, whatever each failure said
        (500, "pack gone", []),
        (501, None, [("recovered", "/f")]),
        (502, None, []),
        (600, "folder missing", []),  # a new episode, counted from its own start
        (605, None, []),  # ended before it was told: its end is no news either
        (700, "folder missing", []),
        (710, "folder missing", [("failing", "/f")]),
    ]
    for now, error, expected in clock:
        assert events(alerts.outcome("/f", error, now)) == expected, now


@pytest.mark.parametrize(("after_s", "said"), [(30, "30 s"), (1800, "30 min"), (3 * 3600, "3.0 h")])
def test_the_failing_message_says_for_how_long(after_s: float, said: str) -> None:
    alerts = Alerts(after_s=after_s)
    alerts.outcome("/f", "pack gone", 100)
    [told] = alerts.outcome("/f", "pack gone", 100 + after_s)
    assert told.title == f"packsync: /f failing for {said}"
    assert told.body == f"/f: every sync for {said} has failed; the last said: pack gone"


def test_a_refused_key_is_told_once_until_a_sync_gets_past_it_each_api_apart() -> None:
    alerts = Alerts(after_s=60)
    assert alerts.key("Genviral", None) == []
    [told] = alerts.key("Genviral", "the Genviral API refused the key")
    assert (told.event, told.title) == ("key refused", "packsync: the Genviral API key was refused")
    assert "reload the daemon (SIGHUP, or `systemctl [--user] reload packsync`)" in told.body
    assert alerts.key("Genviral", "the Genviral API refused the key") == []
    assert events(alerts.key("Astria", "the Astria API refused the key")) == [("key refused", None)]
    assert [a.title for a in alerts.key("Genviral", None)] == ["packsync: the Genviral key works again"]
    assert alerts.key("Genviral", None) == [] and alerts.key("Astria", "the Astria API refused the key") == []
    assert [a.title for a in alerts.key("Astria", None)] == ["packsync: the Astria key works again"]


def test_no_message_carries_the_token_or_a_credential() -> None:
    register_secret(TOKEN)
    alerts = Alerts(after_s=0)
    told = alerts.outcome("/f", f"pack 1: the server said: bad key {TOKEN}", 0)
    told += alerts.stop("/p", f"echo {TOKEN}", 1)
    told += alerts.key("Genviral", "refused: Authorization: Bearer abcdefghijklmnop")
    assert len(told) == 3
    for message in told:
        assert TOKEN not in message.body + message.title and "abcdefghijklmnop" not in message.body


# -- the config --------------------------------------------------------------------------------------------


class NotifyEnv(Env):
    """``Env`` with a ``[notify]`` table."""

    def __init__(self, root: Path, sandbox: Sandbox) -> None:
        super().__init__(root, sandbox)
        self.notify: dict[str, Any] = {}

    def data(self) -> dict[str, Any]:
        return {**super().data(), "notify": self.notify}

    def write_config(self) -> None:
        super().write_config()
        if self.notify:  # (a table after the [[mappings]] ones ends the last of them)
            lines = ["[notify]", f"urls = {json.dumps(self.notify.get('urls', []))}"]
            lines += [f"after_s = {self.notify['after_s']}"] if "after_s" in self.notify else []
            with self.config_path.open("a", encoding="utf-8") as file:
                file.write("\n".join(lines) + "\n")


@pytest.fixture
def env(tmp_path: Path, sandbox: Sandbox) -> NotifyEnv:
    return NotifyEnv(tmp_path, sandbox)


def notify_env(env: Env) -> NotifyEnv:
    assert isinstance(env, NotifyEnv)
    return env


@pytest.mark.parametrize(("url", "said"), [
    ("json://127.0.0.1/${PACKSYNC_TEST_UNSET_VARIABLE}",
     "notify.urls[0]: the environment variable PACKSYNC_TEST_UNSET_VARIABLE is not set."),
    ("nosuchservice://host/path", "notify.urls[0]: apprise does not take this nosuchservice:// URL"),
    ("ntfy.sh/mytopic", "notify.urls[0]: not a URL"),
])
def test_a_notify_url_the_daemon_cannot_use_stops_its_start_naming_the_key(env: Env, url: str, said: str) -> None:
    env.map("pics", pack="p")
    notify_env(env).notify = {"urls": [url]}
    env.write_config()

    started = env.cli("daemon", timeout=60)

    assert started.returncode == ExitCode.USAGE, started.stdout + started.stderr
    assert said in started.stderr and "Traceback" not in started.stderr


def test_a_run_never_needs_the_notify_variables(env: Env) -> None:
    """``run`` from cron does not notify: a variable only the daemon's environment has is no error for it."""
    folder = env.map("pics", pack="p")
    write(folder / "a.png", image())
    notify_env(env).notify = {"urls": ["json://127.0.0.1/${PACKSYNC_TEST_UNSET_VARIABLE}"]}
    env.write_config()

    assert env.cli("run", "--no-wait").returncode == 0


# -- the daemon, sending ---------------------------------------------------------------------------------


class Inbox:
    """A webhook receiver on loopback: what apprise's ``json://`` posts to it (``title``, ``message``)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                inbox.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def titles(self) -> list[str]:
        return [str(message["title"]) for message in list(self.received)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def inbox(daemon_env: Env) -> Iterator[Inbox]:
    receiver = Inbox()
    notify_env(daemon_env).notify = {"urls": [receiver.url], "after_s": 1}
    yield receiver
    receiver.close()


def settled(env: Env, daemon: DaemonProcess, inbox: Inbox, exit_code: int = 0, before: int = 0) -> list[str]:
    """The titles received once one more sync has ended (``exit_code``) and every alert the daemon logged by
    then has arrived (``before``: those a daemon before it told): a late duplicate would be among them."""
    synced = env.cli("sync")
    assert synced.returncode == exit_code, synced.stdout + synced.stderr
    logged = before + daemon.output().count("notifying")  # (written before the sync's answer)
    wait_until(lambda: len(inbox.received) >= logged, timeout=30, what=f"the {logged} alerts logged received")
    return inbox.titles()


def three_images(env: Env) -> tuple[str, Path]:
    """A folder of three images mapped into a pack of their own with ``max_delete = 1``: removing two of them
    is a safety stop."""
    pack_id = env.sandbox.create_pack("p")
    folder = env.map("pics", pack_id=pack_id, max_delete=1)
    for n in range(3):
        write(folder / f"{n}.png", image())
    return pack_id, folder


def test_a_safety_stop_arrives_once_however_many_syncs_it_lasts_and_its_end_once(
        daemon_env: Env, start: StartDaemon, inbox: Inbox) -> None:
    pack_id, folder = three_images(daemon_env)
    daemon = start()
    wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 3, timeout=30)
    (folder / "0.png").unlink()
    (folder / "1.png").unlink()

    [stop] = wait_until(lambda: inbox.titles(), timeout=30, what="the safety stop's notification")
    assert stop == f"packsync: safety stop in {folder}"
    # (the tests' config is not the default one: the command must name it)
    assert f"packsync --config {daemon_env.config_path} allow-deletes {folder}" in inbox.received[0]["message"]
    for _ in range(2):  # two more syncs, the stop standing
        assert daemon_env.cli("sync").returncode == ExitCode.SAFETY
    allowed = daemon_env.cli("allow-deletes", str(folder))
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr

    wait_until(lambda: len(inbox.titles()) == 2, timeout=30, what="the stop's end told")
    assert settled(daemon_env, daemon, inbox) == [stop, f"packsync: safety stop cleared in {folder}"]


def test_a_refused_key_arrives_once_without_the_token_and_its_end_once(
        daemon_env: Env, start: StartDaemon, inbox: Inbox) -> None:
    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "seed.png", image())
    daemon = start()
    daemon_env.sandbox.accounts[TOKEN] = Account(scope="ws-1", status=401)

    write(folder / "while-revoked.png", image())
    wait_until(lambda: inbox.titles(), timeout=30, what="the refused key's notification")
    write(folder / "still-revoked.png", image())  # (paused: nothing more is tried, nor told)
    daemon_env.sandbox.accounts[TOKEN] = Account(scope="ws-1")
    daemon.proc.send_signal(signal.SIGHUP)

    wait_until(lambda: len(inbox.titles()) == 2, timeout=30, what="the key's recovery told")
    assert settled(daemon_env, daemon, inbox) == ["packsync: the Genviral API key was refused",
                                                  "packsync: the Genviral key works again"]
    assert all(TOKEN not in json.dumps(message) for message in inbox.received)
    assert "invalid or revoked" in inbox.received[0]["message"]


def test_a_folder_failing_longer_than_after_s_arrives_once_without_the_token_it_echoes_and_its_recovery_once(
        daemon_env: Env, start: StartDaemon, inbox: Inbox) -> None:
    """A pack the server will not read, with an error that echoes the key: told once the failing lasted
    ``after_s`` (at a retry past it), without the key; told again only when the folder syncs."""
    from packsync.sandbox.server import fail

    pack_id = daemon_env.sandbox.create_pack("p")
    folder = daemon_env.map("pics", pack_id=pack_id)
    write(folder / "seed.png", image())
    daemon = start()
    daemon_env.sandbox.rewrite("GET", "/packs/{id}", lambda _reply: fail(400, "bad_request", f"bad key {TOKEN}"))
    daemon_env.cli("sync")  # the failing starts now, not at the next full rescan

    [failing] = wait_until(lambda: inbox.titles(), timeout=30, what="the failing folder's notification")
    assert failing.startswith(f"packsync: {folder} failing for ")
    assert "bad key" in inbox.received[0]["message"] and TOKEN not in json.dumps(inbox.received[0])
    daemon_env.sandbox.clear_faults()
    assert daemon_env.cli("sync").returncode == 0

    wait_until(lambda: len(inbox.titles()) == 2, timeout=30, what="the folder's recovery told")
    assert settled(daemon_env, daemon, inbox) == [failing, f"packsync: {folder} syncs again"]


def test_a_notification_that_cannot_be_sent_is_logged_once_and_syncing_goes_on(
        daemon_env: Env, start_here: StartHere) -> None:
    import socket

    with socket.socket() as closed:  # a port nothing listens on once it is closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    notify_env(daemon_env).notify = {"urls": [f"json://127.0.0.1:{port}/hook"]}
    pack_id, folder = three_images(daemon_env)
    daemon = start_here()
    (folder / "0.png").unlink()
    (folder / "1.png").unlink()
    assert daemon_env.cli("sync").returncode == ExitCode.SAFETY
    assert daemon_env.cli("allow-deletes", str(folder)).returncode == 0  # (its end: a second message)

    wait_until(lambda: daemon.output().count("notifying") == 2, timeout=30, what="both messages tried")
    wait_until(lambda: "notification not sent" in daemon.output(), timeout=30, what="the failed send logged")
    assert len(daemon_env.pack(pack_id)["images"]) == 1 and daemon.running
    daemon.stop()  # (the second send ended by now: the daemon waits for those under way)
    assert daemon.output().count("notification not sent") == 1
    assert f"127.0.0.1:{port}" not in daemon.output(), "a URL (a secret) was logged"


def test_run_and_help_never_import_apprise(env: Env) -> None:
    from test_startup import imported

    write(env.map("brand", pack_id=env.sandbox.create_pack("p")) / "a.png", image())
    notify_env(env).notify = {"urls": ["json://127.0.0.1:9/hook"]}
    env.write_config()
    assert "apprise" not in imported("-c", str(env.config_path), "run", token=TOKEN)
    assert "apprise" not in imported("-c", str(env.config_path), "daemon", "--help")


def test_notify_test_sends_to_each_url_and_says_which_failed(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    receiver = Inbox()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    try:
        env.map("pics", pack="p")
        notify_env(env).notify = {"urls": [receiver.url, f"json://127.0.0.1:{port}/${{HOOK_PATH}}"]}
        env.write_config()
        monkeypatch.setenv("HOOK_PATH", "secret-path")  # (the command's environment: ``cli`` passes it on)
        tried = env.cli("notify", "test", token=None)
    finally:
        receiver.close()

    assert tried.returncode == ExitCode.SOME_FAILED, tried.stdout + tried.stderr
    assert tried.stdout.splitlines() == ["sent    notify.urls[0] (json)", "FAILED  notify.urls[1] (json)"]
    assert receiver.titles() == ["packsync: a test notification"]
    assert "secret-path" not in tried.stdout + tried.stderr


def test_notify_test_without_urls_says_there_are_none(env: Env) -> None:
    env.map("pics", pack="p")
    tried = env.cli("notify", "test", token=None)
    assert tried.returncode == ExitCode.USAGE
    assert "notify.urls: no URL to send to" in tried.stderr


def test_a_stop_told_before_a_restart_is_not_told_again_after_it(
        daemon_env: Env, start: StartDaemon, inbox: Inbox) -> None:
    pack_id, folder = three_images(daemon_env)
    daemon = start()
    wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 3, timeout=30)
    removed = {name: (folder / name).read_bytes() for name in ("0.png", "1.png")}
    for name in removed:
        (folder / name).unlink()
    [stop] = wait_until(lambda: inbox.titles(), timeout=30, what="the safety stop's notification")
    assert daemon.stop() == 0
    daemon.close()
    (daemon_env.root / "notify.sock").unlink()

    again = start()  # its first sync meets the same stop
    assert daemon_env.cli("sync").returncode == ExitCode.SAFETY
    for name, data in removed.items():  # the user puts the files back: the stop clears
        write(folder / name, data)
    wait_until(lambda: len(inbox.titles()) == 2, timeout=30, what="the stop's end told")
    assert settled(daemon_env, again, inbox, before=1) == [stop, f"packsync: safety stop cleared in {folder}"]


@pytest.mark.parametrize(("url", "said"), [
    ("nosuchservice://host/path", "notify.urls[1]: apprise does not take this nosuchservice:// URL"),
    # The daemon's environment is the one it started with: a new variable needs a restart, and says so.
    ("json://127.0.0.1/${PACKSYNC_TEST_UNSET_VARIABLE}",
     "notify.urls[1]: the environment variable PACKSYNC_TEST_UNSET_VARIABLE is not set in the daemon's "
     "environment, which a reload cannot change: set it where the daemon gets its environment (its "
     "EnvironmentFile=) and restart it (`systemctl [--user] restart packsync`)."),
])
def test_a_reload_with_a_url_the_daemon_cannot_use_keeps_the_running_notifications(
        daemon_env: Env, start: StartDaemon, inbox: Inbox, url: str, said: str) -> None:
    pack_id, folder = three_images(daemon_env)
    daemon = start()
    wait_until(lambda: len(daemon_env.pack(pack_id)["images"]) == 3, timeout=30)
    notify_env(daemon_env).notify["urls"].append(url)
    daemon_env.write_config()

    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config reload failed" in daemon.output(), timeout=30, what="the reload refused")
    assert said in daemon.output()
    (folder / "0.png").unlink()
    (folder / "1.png").unlink()

    wait_until(lambda: inbox.titles(), timeout=30, what="the safety stop told through the running URL")
    assert daemon.proc.poll() is None
    assert settled(daemon_env, daemon, inbox, ExitCode.SAFETY) == [f"packsync: safety stop in {folder}"]


def test_alerts_waiting_at_a_reload_are_sent_before_a_stop_ends_the_daemon(tmp_path: Path) -> None:
    """One queue, one sender, which ``close`` waits for: an alert waiting when a reload changed the services is
    sent (to the new ones) before the stop, not left behind in a queue nobody waits for."""
    import apprise

    before, after = Inbox(), Inbox()
    alerts = [Alert("failing", f"/f{n}", f"packsync: /f{n} failing", "…") for n in range(3)]
    reloaded = parse_config({"genviral": {"base_url": "http://127.0.0.1:9"}, "notify": {"urls": [after.url]}},
                            source=tmp_path / "config.toml")

    async def scenario() -> None:
        notifications = Notifications(Alerts(60), Notifier([("old", apprise.Apprise.instantiate(before.url))]))
        notifications.tell(alerts)
        await asyncio.sleep(0)  # (the first is on its way, or not: either way none may be lost)
        notifications.reconfigure(reloaded)
        await notifications.close()

    try:
        asyncio.run(scenario())
        assert sorted(before.titles() + after.titles()) == [a.title for a in alerts]
        assert after.titles(), "the services of the reloaded config send the alerts still waiting"
    finally:
        before.close()
        after.close()


def test_a_refused_astria_key_is_told_as_such_at_once_and_its_end_once(
        daemon_env: Env, start: StartDaemon, inbox: Inbox) -> None:
    from test_astria import astria_pack

    pack_id, _ = astria_pack(daemon_env, {"woman": 1})
    label = daemon_env.map_astria(pack_id, pack="Headshots")
    notify_env(daemon_env).notify["after_s"] = 3600  # (told as a failing folder only after an hour)
    users = dict(daemon_env.sandbox.astria.users)
    daemon_env.sandbox.astria.users = {}
    daemon = start()

    [refused] = wait_until(lambda: inbox.titles(), timeout=30, what="the refused Astria key's notification")
    assert refused == "packsync: the Astria API key was refused"
    assert "the Astria API refused the key" in inbox.received[0]["message"]
    assert "reload the daemon (SIGHUP, or `systemctl [--user] reload packsync`)" in inbox.received[0]["message"]
    assert settled(daemon_env, daemon, inbox, ExitCode.AUTH) == [refused], "told once while it lasts"
    daemon_env.sandbox.astria.users = users
    daemon.proc.send_signal(signal.SIGHUP)

    wait_until(lambda: len(inbox.titles()) == 2, timeout=30, what="the Astria key's recovery told")
    assert settled(daemon_env, daemon, inbox) == [refused, "packsync: the Astria key works again"]
    assert label not in " ".join(inbox.titles()), "a key, not a folder failing"


def test_a_source_s_refused_key_ends_only_when_a_source_of_that_api_syncs() -> None:
    """The key alert of a source's API is cleared by a mapping read through that API syncing, never by a
    folder's: the alert is per ``source.api``, whatever the kind of source."""
    from packsync.engine.subfolders import Target
    from packsync.engine.sync import MappingReport

    config = parse_config({"mappings": [{"astria_pack": 260, "pack": "Headshots"}, {"path": "/f", "pack": "F"}]})
    remote, folder = config.mappings

    def report(mapping: Any, **outcome: Any) -> MappingReport:
        return MappingReport(mapping, "P", Target(mapping), **outcome)

    notifications = Notifications(Alerts(60), None)
    notifications.synced([report(remote, error="the Astria API refused the key", refused=True)], {}, 0)
    assert notifications.alerts.refused == {"Astria": "the Astria API refused the key"}
    [told] = Alerts(60).key("Astria", "the Astria API refused the key")
    assert "The Astria sources are not synced until the key works" in told.body
    notifications.synced([report(folder)], {}, 1)
    assert "Astria" in notifications.alerts.refused, "a folder synced says nothing of the Astria key"
    notifications.synced([report(remote, error="pack gone")], {}, 2)
    assert "Astria" in notifications.alerts.refused, "a source that failed otherwise did not get past the key"
    notifications.synced([report(remote), report(folder)], {}, 3)
    assert notifications.alerts.refused == {}
