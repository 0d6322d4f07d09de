"""The daemon's web surface, started beside its loop: health, metrics and the page (``packsync.web``).

aiohttp, Jinja2 and prometheus_client are imported only here, when serving, so ``run`` and ``status``
never pay for them. A port already taken is logged once and the daemon syncs on without the page:
the page is never a reason for the mirror to stop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from packsync.config import Config
from packsync.logs import get_logger

if TYPE_CHECKING:
    from packsync.web.health import Live
    from packsync.web.metrics import Metrics
    from packsync.web.server import Served, Site


class Web:
    def __init__(self, site: Site, served: Served, url: str) -> None:
        self.site, self.served, self.url = site, served, url

    @property
    def metrics(self) -> Metrics:
        return self.site.metrics

    @classmethod
    async def start(cls, config: Config, live: Live | None, request_s: float) -> Web | None:
        """Serve ``config``'s ``[http] listen`` address, a stalled request let go after ``request_s``;
        None when it cannot be (logged)."""
        from packsync.web.server import Site, page_url, serve

        assert config.http.address is not None, "[http] listen is off"
        host, port = config.http.address
        site = Site.open(config, live)
        log = get_logger()
        try:
            served = await serve(site, host, port, request_s)
        except OSError as exc:
            site.close()
            log.error("cannot serve the web page and metrics; syncing without them", listen=config.http.listen,
                      error=exc.strerror or str(exc))
            return None
        url = page_url(host, served.port)
        log.info("web page, health and metrics served", url=url)
        return cls(site, served, url)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: the pages and metrics show its mappings (the listen address stays)."""
        self.site.config = self.site.metrics.state.config = config

    async def close(self) -> None:
        await self.served.close()
        self.site.close()
