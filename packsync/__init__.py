"""packsync: keep Genviral image packs an exact, live mirror of local folders."""

__version__ = "0.1.0"
