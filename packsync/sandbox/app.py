"""The :class:`Sandbox` object: lifecycle, configuration and test-facing helpers.

Owns starting and stopping the HTTP server on a background thread, the request counters
(``calls``), scripted fault injection, the link's rate, and the seeding/inspection helpers that tests use
to reach into the store without HTTP, faults or latency.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from .astria import ASTRIA_PREFIX, AstriaStore
from .faults import FaultPlan, Faults
from .link import Direction, Link, LinkRate
from .server import API_PREFIX, Reply, SandboxServer
from .store import Account, Store
from .validation import IMAGE_CONTENT_TYPES

__all__ = ["Sandbox", "DEMO_TOKEN", "MUTATING_METHODS"]

DEMO_TOKEN = "gva_sandbox_demo.secret"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Sandbox:
    """A local, faithful Genviral Partner API (packs, files, storage, CDN) on 127.0.0.1."""

    def __init__(
        self,
        accounts: Mapping[str, Account] | None = None,
        state_path: Path | str | None = None,
        upload_ttl_s: float = 600.0,
        enrich_delays: tuple[float, float] = (0.2, 0.3),
        faults: Faults | None = None,
        link_rate: LinkRate | None = None,
    ) -> None:
        self.accounts: dict[str, Account] = (
            dict(accounts) if accounts is not None else {DEMO_TOKEN: Account(scope="demo")})
        self.upload_ttl_s = float(upload_ttl_s)
        self.faults = faults if faults is not None else Faults()
        self.plan = FaultPlan(self.faults)
        self.link = Link(link_rate)
        self.store = Store(Path(state_path) if state_path is not None else None, enrich_delays)
        self.astria = AstriaStore(lambda: self.origin)
        self._calls: Counter[tuple[str, str]] = Counter()
        self._calls_lock = threading.Lock()
        self._rewrites: list[list[Any]] = []
        self._gathers: list[list[Any]] = []
        self._server: SandboxServer | None = None
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- lifecycle
    def start(self, port: int = 0) -> Sandbox:
        """Serve on a background thread (port 0 picks a free port); returns self."""
        if self._server is not None:
            raise RuntimeError("sandbox already started")
        self._server = SandboxServer(port, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"sandbox-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections; safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def serve_forever(self, port: int) -> None:
        """Blocking variant: serve until KeyboardInterrupt, then stop cleanly.

        When the sandbox is already running (e.g. started to learn a free port), keeps
        serving where it is and ``port`` is ignored.
        """
        if self._server is None:
            self.start(port)
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Sandbox:
        if self._server is None:
            self.start(0)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("sandbox is not running")
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``: where storage and CDN URLs point."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.origin + API_PREFIX

    @property
    def astria_url(self) -> str:
        """The base URL of the sandbox's Astria API."""
        return self.origin + ASTRIA_PREFIX

    # ----------------------------------------------------------------- faults
    def inject(self, kind: str, method: str | None = None, route: str | None = None,
               count: int = 1) -> None:
        """The next ``count`` requests matching (method, route template) get fault ``kind``."""
        self.plan.inject(kind, method, route, count)

    def clear_faults(self) -> None:
        """Forget scripted faults, rewrites and gathers that have not fired yet."""
        self.plan.clear()
        with self._calls_lock:
            self._rewrites.clear()
            self._gathers.clear()

    def rewrite(self, method: str, route: str, change: Callable[[Reply], Reply], count: int = 1 << 30) -> None:
        """Pass the next ``count`` answers to (method, route template) through ``change``: a server
        that answers what its documentation does not promise, for hostile tests. The work is done."""
        with self._calls_lock:
            self._rewrites.append([method.upper(), route, change, count])

    def rewritten(self, method: str, route: str, reply: Reply) -> Reply:
        with self._calls_lock:
            for entry in self._rewrites:
                if entry[0] == method and entry[1] == route:
                    entry[3] -= 1
                    if entry[3] == 0:
                        self._rewrites.remove(entry)
                    change: Callable[[Reply], Reply] = entry[2]
                    break
            else:
                return reply
        return change(reply)

    def gather(self, method: str, route: str, count: int = 2, timeout_s: float = 20.0) -> None:
        """Hold the next ``count`` requests to (method, route template) until all of them have arrived
        (or ``timeout_s`` passed), then serve them together: clients that race, made to race for sure."""
        with self._calls_lock:
            self._gathers.append([method.upper(), route, threading.Barrier(count, timeout=timeout_s), count])

    def gathered(self, method: str, route: str) -> None:
        """Wait here if a ``gather`` holds this request (the server calls it before doing the work)."""
        with self._calls_lock:
            entry = next((e for e in self._gathers if e[0] == method and e[1] == route), None)
            if entry is None:
                return
            entry[3] -= 1
            if entry[3] == 0:
                self._gathers.remove(entry)
        try:
            entry[2].wait()
        except threading.BrokenBarrierError:
            pass

    # ------------------------------------------------------------------ link
    def set_link_rate(self, rate: LinkRate) -> None:
        """Storage PUT bodies come in, and CDN bodies go out, at ``rate`` from now on (bodies already
        moving included)."""
        self.link.set_rate(rate)

    def link_moved(self) -> dict[Direction, int]:
        """Bytes of storage PUT bodies received (``up``) and of CDN bodies sent (``down``) so far."""
        return self.link.moved()

    # ----------------------------------------------------------------- calls
    def _count(self, method: str, route: str) -> None:
        with self._calls_lock:
            self._calls[(method, route)] += 1

    @property
    def calls(self) -> Counter[tuple[str, str]]:
        """Snapshot of requests served, keyed by (method, route template)."""
        with self._calls_lock:
            return Counter(self._calls)

    def reset_calls(self) -> None:
        with self._calls_lock:
            self._calls.clear()

    def mutating_calls(self) -> int:
        with self._calls_lock:
            return sum(n for (method, _), n in self._calls.items() if method in MUTATING_METHODS)

    # ----------------------------------------------------- seeding/inspection
    def create_pack(self, name: str, scope: str = "ws-1", is_public: bool = False) -> str:
        return str(self.store.create_pack(scope, name, is_public)["id"])

    def add_image(self, pack_id: str, url: str, file_name: str = "image") -> str:
        image = self.store.add_image(None, pack_id, url, file_name)
        if image is None:
            raise KeyError(pack_id)
        return str(image["id"])

    def upload(self, data: bytes, content_type: str = "image/png", named: str | None = None,
               scope: str = "ws-1") -> str:
        """Put bytes in storage as the web app's uploader does (or, ``named``, as a client of ``POST /files``
        that gave them that filename, which ``GET /files`` then lists for ``scope``); returns their CDN URL."""
        key = uuid.uuid4().hex
        url = f"{self.origin}/cdn/{key}.{IMAGE_CONTENT_TYPES[content_type]}"
        if named is not None:
            self.store.create_file(scope, key, url, content_type, named)
        self.store.put_blob(key, content_type, data)
        return url

    def add_uploaded(self, pack_id: str, data: bytes, file_name: str = "image.png",
                     content_type: str = "image/png", named: str | None = None) -> str:
        """An image added in the web app (or through the API, its upload ``named``): its bytes uploaded, then
        added to the pack. Returns its id."""
        return self.add_image(pack_id, self.upload(data, content_type, named), file_name)

    def remove_image(self, pack_id: str, image_id: str) -> None:
        if self.store.delete_image(None, pack_id, image_id) != "deleted":
            raise KeyError(image_id)

    def delete_pack(self, pack_id: str) -> None:
        if not self.store.delete_pack(None, pack_id):
            raise KeyError(pack_id)

    def pack(self, pack_id: str) -> dict[str, Any] | None:
        return self.store.get_pack(None, pack_id)

    def packs(self) -> list[dict[str, Any]]:
        return self.store.all_packs()
