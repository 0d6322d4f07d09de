"""Where content comes from: sources list content items with an identity and open their bytes.

A source is the truth a pack follows. ``folder`` is a local folder (walked, hashed against a stat
cache); ``media`` says what a file's bytes are. The planner and the executor never name a kind of
source: they see content items, and the executor reads an item's bytes through its ``Source``
(``packsync.sources.base``). ``app.py`` picks the source for each mapping.
"""

