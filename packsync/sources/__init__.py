"""Where content comes from: sources list content items with an identity and open their bytes.

A source is the truth a pack follows. ``folder`` is a local folder (walked, hashed against a stat
cache); ``media`` says what a file's bytes are. The engine never names a kind of source: it asks a
``Source`` (``packsync.sources.base``) for a listing and for an item's bytes.
"""
