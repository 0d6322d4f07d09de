"""Every delay the daemon waits, in one value: the product's by default, shorter ones in tests.

Nothing in ``packsync/daemon/`` sleeps, backs off or gives up after a time of its own: it asks the
``Timing`` the ``Daemon`` was made with, so a test of a retry or a pause passes a ``Timing`` of
milliseconds instead of waiting minutes.
"""

from __future__ import annotations

import msgspec

from packsync.daemon.aggregator import MAX_BATCH_WAIT_S
from packsync.engine.metadata import POLL_BACKOFF
from packsync.remote.retry import Backoff
from packsync.web.limits import REQUEST_S


class Timing(msgspec.Struct, frozen=True):
    #: A failing mapping (or a state that cannot be opened) is retried after 5 s, doubling up to 5 min,
    #: ±20 % so that mappings drift apart.
    mapping_retry: Backoff = Backoff(5.0, 300.0, 0.2)
    #: A background loop that crashed is restarted after 1 s, doubling up to 1 min.
    loop_restart: Backoff = Backoff(1.0, 60.0, 0.2)
    #: Metadata rounds, while images wait for their AI metadata.
    metadata_poll: Backoff = POLL_BACKOFF
    #: A refused key pauses syncing this long (or until SIGHUP, or the page asks).
    auth_pause_s: float = 900.0
    #: After a folder's sync found another site syncing its pack (a shared state): when to try again.
    turn_s: float = 5.0
    #: A stop lets the sync in flight finish this long before abandoning it.
    stop_grace_s: float = 5.0
    #: The watchers' threads get this long to stop; past it they are left to die with the process.
    watcher_stop_s: float = 2.0
    #: Past this long after SIGTERM the process exits where it is (the promise is 10 s).
    stop_deadline_s: float = 8.0
    #: The loop comes round at least this often (more often when systemd's watchdog asks).
    tick_s: float = 5.0
    #: A connection to the page that has not sent its request's headers this long after it opened (or
    #: stops reading an answer this long) is closed: a client that stalls holds no descriptor for long.
    page_request_s: float = REQUEST_S
    #: A folder that never stops changing is still synced this often (its busy files excepted).
    max_batch_wait_s: float = MAX_BATCH_WAIT_S
    #: A mapping still syncing after this long is named by the page and /healthz (degraded): its remote
    #: answers slowly, or not at all (each request ends by its deadline, a few read timeouts).
    stuck_after_s: float = 120.0

    def tick(self, watchdog_s: float | None) -> float:
        """How often the loop comes round: ``tick_s``, or the watchdog's interval when that is shorter."""
        return min(watchdog_s or self.tick_s, self.tick_s)


#: The product's delays.
PRODUCT = Timing()
