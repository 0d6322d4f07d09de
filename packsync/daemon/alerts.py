"""Alerts: a word to a person when the daemon needs one, sent through apprise (the ``[notify]`` services).

``Alerts`` decides what to tell, purely: each sync's outcome and the time go in, ``Alert``s come out. It
remembers each episode so that each is told once, however many syncs it lasts: a safety stop (until the
mapping syncs without one), a refused key, Genviral's or a source's API's (until a sync gets past it), a folder
failing longer than ``notify.after_s`` (until it syncs), and the end of each. ``Notifier`` sends through
apprise (imported here only, and only when URLs are configured: ``run`` and ``--help`` never pay for it),
off the event loop and within a deadline; a send that fails is logged, never a reason for a sync to fail.
``Notifications`` joins the two for ``rounds.py``, which feeds it, and ``service.py``, which makes it and
reconfigures it on reload. Every alert's text is redacted as the logs are: it never carries the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from packsync.config import Config, default_config_path, read_notify_urls
from packsync.errors import ConfigError
from packsync.logs import get_logger, untrusted

if TYPE_CHECKING:
    from packsync.engine.sync import MappingReport

#: How long one message may take to reach every service before it is given up (apprise's own requests time
#: out sooner; this bounds a service that accepts the connection and then says nothing).
SEND_TIMEOUT_S = 30.0
#: How long a stop waits for the alerts still being sent: short, inside the stop's own deadline
#: (``Timing.stop_deadline_s``) after the sync in flight had its grace.
CLOSE_GRACE_S = 1.0

Event = Literal["safety stop", "safety stop cleared", "key refused", "key accepted", "failing", "recovered", "test"]
#: An API whose key may be refused, as people read its name ("Genviral", "Astria"): Genviral's stops every
#: sync, another's only the sources read through it.
Api = str
GENVIRAL: Api = "Genviral"


def _api_name(api: str) -> Api:
    """A source's API (``"astria"``, as the config's table is named) as people read it: "Astria"."""
    return api.capitalize()


#: How a message says to reload (the unit is a user's or the system's).
RELOAD = "reload the daemon (SIGHUP, or `systemctl [--user] reload packsync`)"


class Alert(msgspec.Struct, frozen=True):
    """One notification: what happened (``event``), to which mapping or folder (None: a key), in words."""

    event: Event
    label: str | None
    title: str
    body: str


#: What ``packsync notify test`` sends.
TEST = Alert("test", None, "packsync: a test notification",
             "packsync can reach you here: a safety stop, a refused key or a folder failing for long is told "
             "this way.")


@dataclass
class _Failing:
    since: float  # when its first failure of this episode was seen
    told: bool = False


class Alerts:
    """What to tell, and when: each episode once, and its end once (only when its start was told)."""

    def __init__(self, after_s: float, stopped: Iterable[str] = (), config: Path | None = None) -> None:
        self.after_s = after_s
        #: The mappings whose safety stop was told (at start: those the state records as stopped, told
        #: by the daemon before this one).
        self.stopped: set[str] = set(stopped)
        self.failing: dict[str, _Failing] = {}  # by daemon folder
        self.refused: dict[Api, str] = {}  # each refused key's sentence, once told
        self.config = config  # the daemon's config file, when not the default: the commands it says need it

    def stop(self, label: str, reason: str | None, withheld: int) -> list[Alert]:
        """Mapping ``label`` synced: with a safety stop (``reason``) withholding ``withheld`` deletes, or none."""
        if reason is None:
            if label not in self.stopped:
                return []
            self.stopped.discard(label)
            return [Alert("safety stop cleared", label, f"packsync: safety stop cleared in {label}",
                          f"{label}: no deletes are withheld any more.")]
        if label in self.stopped:
            return []
        self.stopped.add(label)
        deletes = f"{withheld} delete{'s' if withheld != 1 else ''}" if withheld else "deletes"
        config = f" --config {shlex.quote(str(self.config))}" if self.config else ""
        return [Alert("safety stop", label, f"packsync: safety stop in {label}",
                      f"{label}: {deletes} withheld ({_text(reason)}). If the files were removed on purpose, "
                      f"let the deletes through with: packsync{config} allow-deletes {shlex.quote(label)}")]

    def outcome(self, folder: str, error: str | None, now: float) -> list[Alert]:
        """Folder ``folder``'s sync ended in ``error`` (None: it synced) at ``now`` (monotonic seconds)."""
        if error is None:
            episode = self.failing.pop(folder, None)
            if episode is None or not episode.told:
                return []
            return [Alert("recovered", folder, f"packsync: {folder} syncs again",
                          f"{folder}: synced again after failing for {_duration(now - episode.since)}.")]
        episode = self.failing.setdefault(folder, _Failing(now))
        if episode.told or now - episode.since < self.after_s:
            return []
        episode.told = True
        return [Alert("failing", folder, f"packsync: {folder} failing for {_duration(now - episode.since)}",
                      f"{folder}: every sync for {_duration(now - episode.since)} has failed; the last said: "
                      f"{_text(error)}")]

    def key(self, api: Api, refused: str | None) -> list[Alert]:
        """A sync met ``api``'s key refused (``refused``: the sentence saying so) or got past it (None)."""
        if refused is None:
            if self.refused.pop(api, None) is None:
                return []
            return [Alert("key accepted", None, f"packsync: the {api} key works again",
                          f"The {api} API key is accepted again; syncing goes on.")]
        if api in self.refused:
            return []
        self.refused[api] = refused
        paused = "Syncing is paused" if api == GENVIRAL else f"The {api} sources are not synced"
        return [Alert("key refused", None, f"packsync: the {api} API key was refused",
                      f"{_text(refused)}. {paused} until the key works: renew it, then {RELOAD}.")]


def _text(text: str) -> str:
    """``text`` from an error, fit for a message: registered secrets and credential-shaped words redacted."""
    return untrusted(text.rstrip("."), limit=500)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Notifier:
    """The configured services, each an apprise plugin made from its URL, sent to one by one."""

    def __init__(self, services: Sequence[tuple[str, Any]], timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.services = services  # (how a message names it: its key and kind, never its URL; the plugin)
        self.timeout_s = timeout_s  # how long one service may take to take one message

    @classmethod
    def open(cls, config: Config, *, reload: bool = False, timeout_s: float = SEND_TIMEOUT_S) -> Notifier | None:
        """The services of ``config``'s ``[notify] urls`` (None: there are none); a URL apprise does not take
        is a config error naming its key (``reload``: an unset variable's error says a restart gives it)."""
        urls = read_notify_urls(config, reload=reload)
        if not urls:
            return None
        import apprise

        # apprise's own log lines may quote a URL, and so a credential, as do those of urllib3 it sends with
        # (each request's path, at -v): packsync says what failed instead. (packsync's own HTTP is httpx's.)
        logging.getLogger("apprise").disabled = True
        logging.getLogger("urllib3").setLevel(logging.CRITICAL + 1)
        services = []
        for index, url in enumerate(urls):
            kind = url.partition("://")[0].lower()
            plugin = apprise.Apprise.instantiate(url)
            if plugin is None:
                where = f"{config.source}: " if config.source else ""
                raise ConfigError(f"{where}notify.urls[{index}]: apprise does not take this {kind}:// URL (an "
                                  "unknown service, or a URL its service cannot read); see "
                                  "https://github.com/caronc/apprise/wiki")
            services.append((f"notify.urls[{index}] ({kind})", plugin))
        return cls(services, timeout_s)

    def each(self, message: Alert) -> list[tuple[str, bool]]:
        """Send ``message`` to every service, waiting: each one's name, and whether it took the message."""
        return [(name, _sent(plugin, message, self.timeout_s)) for name, plugin in self.services]

    def send_now(self, message: Alert) -> list[str]:
        """Send ``message`` to every service, waiting; the names of those that failed."""
        return [name for name, sent in self.each(message) if not sent]

    async def send(self, message: Alert) -> list[str]:
        """``send_now`` in a thread (apprise blocks), given up after ``SEND_TIMEOUT_S``. The thread is a daemon
        thread of its own, not the loop's executor: a service that never finishes answering (its bytes
        trickling in, so no read timeout fires) would hold the executor's shutdown, and so every stop of the
        daemon, until the process deadline."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[str]] = loop.create_future()

        def finish(failed: list[str]) -> None:
            if not done.done():
                done.set_result(failed)

        def work() -> None:
            failed = self.send_now(message)
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
                loop.call_soon_threadsafe(finish, failed)

        threading.Thread(target=work, name="notify", daemon=True).start()
        try:
            return await asyncio.wait_for(done, SEND_TIMEOUT_S)
        except TimeoutError:
            return [name for name, _ in self.services]


def _sent(plugin: Any, message: Alert, timeout_s: float) -> bool:
    """Whether ``plugin`` took ``message`` within ``timeout_s``. A plugin's own bug (apprise has a hundred) is
    a message not sent, not a daemon in trouble: its text is not shown, it may quote the URL. apprise's
    read timeout bounds each read, not the answer: a service trickling its answer would hold the caller
    (``notify test``, the daemon's sender) for ever, so the send runs in a daemon thread, given up at the
    deadline."""
    took: list[bool] = []

    def send() -> None:
        try:
            took.append(bool(plugin.notify(body=message.body, title=message.title)))
        except Exception:  # noqa: BLE001 - see the docstring
            took.append(False)

    thread = threading.Thread(target=send, name="notify", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return took == [True]


class Notifications:
    """What ``rounds.py`` tells: the outcomes it handles, decided by ``Alerts`` and sent by ``Notifier``, in order,
    by one task beside the loop (a sync never waits for a notification)."""

    def __init__(self, alerts: Alerts, notifier: Notifier | None) -> None:
        self.alerts = alerts
        self.notifier = notifier
        self.waiting: deque[Alert] = deque()
        self.sender: asyncio.Task[None] | None = None  # while alerts wait
        self.unsent = False  # the last send failed: said once until one succeeds
        self.log = get_logger()

    @classmethod
    def open(cls, config: Config) -> Notifications:
        """For ``config`` (its services checked now: a config error at start)."""
        return cls(Alerts(config.notify.after_s, config=_given(config)), Notifier.open(config))

    def reconfigure(self, config: Config) -> None:
        """A reload: ``config``'s services from now on, for the alerts still waiting too (one queue, one sender,
        which ``close`` waits for); the episodes are kept. A config error changes nothing."""
        notifier = Notifier.open(config, reload=True)
        self.notifier = notifier
        self.alerts.after_s = config.notify.after_s
        self.alerts.config = _given(config)
        if notifier is None:
            self.waiting.clear()  # (no service to send them to any more)

    def synced(self, reports: Sequence[MappingReport], folder_of: dict[str, str], now: float) -> None:
        """A sync's mappings: each one's safety stop, each folder's error (a safety stop is no error: it is told
        as itself), and the keys it got past or met refused (a source's API's key refused is told as such, not as
        its folder failing). ``folder_of``: each mapping's daemon folder."""
        alerts = self.alerts.key(GENVIRAL, None)
        errors: dict[str, str | None] = {}
        keys: dict[Api, str | None] = {}  # each source API met: its key's refusal, or None (got past it)
        for report in reports:
            alerts += self.alerts.stop(report.label, report.safety,
                                       report.plan.weighed if report.plan and report.safety else 0)
            api = _api_name(report.config.source.api) if report.config.source is not None else None
            if report.refused:  # (only a source read through an API has a key of its own to refuse)
                if api is not None:
                    keys[api] = keys.get(api) or report.error
                continue
            failed = report.error or (report.outcome.error if report.outcome else None)
            if api is not None and failed is None:
                keys.setdefault(api, None)
            folder = folder_of.get(report.label, report.label)
            errors[folder] = errors.get(folder) or failed
        for api, refused in keys.items():
            alerts += self.alerts.key(api, refused)
        for folder, error in errors.items():
            alerts += self.alerts.outcome(folder, error, now)
        self.tell(alerts)

    def failed(self, folders: Iterable[str], error: str, now: float) -> None:
        """A round failed as a whole (the network, the state): each of its folders failed."""
        self.tell([alert for folder in folders for alert in self.alerts.outcome(folder, error, now)])

    def refused(self, sentence: str) -> None:
        """A round failed as a whole for Genviral's key refused."""
        self.tell(self.alerts.key(GENVIRAL, sentence))

    def tell(self, alerts: list[Alert]) -> None:
        if self.notifier is None or not alerts:
            return
        for alert in alerts:
            self.log.info("notifying", notice=alert.event, mapping=alert.label)
        self.waiting.extend(alerts)
        if self.sender is None or self.sender.done():
            self.sender = asyncio.create_task(self._send())

    async def _send(self) -> None:
        """Send the waiting alerts one by one (apprise's plugins are not made to be shared by threads), each
        to the services configured when its turn comes."""
        while self.waiting and (notifier := self.notifier) is not None:
            alert = self.waiting.popleft()
            failed = await notifier.send(alert)
            if failed and not self.unsent:
                self.log.error("notification not sent; later ones are tried all the same", notice=alert.event,
                               services=failed)
            elif not failed and self.unsent:
                self.log.info("notifications are sent again")
            self.unsent = bool(failed)

    async def close(self) -> None:
        """Wait a little for the alerts still being sent (a stop right after a safety stop still tells)."""
        if self.sender is not None and not self.sender.done():
            await asyncio.wait({self.sender}, timeout=CLOSE_GRACE_S)
            self.sender.cancel()  # (its thread is left to finish or to die with the process)
            await asyncio.gather(self.sender, return_exceptions=True)


def _given(config: Config) -> Path | None:
    """``config``'s file when it is not the default one: a command a message says must name it."""
    if config.source is None or config.source.resolve() == default_config_path().resolve():
        return None
    return config.source.resolve()
