"""How much of the page's server a client may hold, and for how long (light: no aiohttp).

A client that opens connections and stalls — headers that never end, a body announced and never
sent, an answer never read — or that opens very many, must not pile up descriptors in the daemon,
which needs them to sync. The daemon's ``Timing`` carries ``REQUEST_S`` (shorter in tests);
``packsync ui`` serves with it as is.
"""

from __future__ import annotations

#: A connection that has not sent its request's headers (the first, or the next on a kept-alive one)
#: this long after it opened (or after the last answer) is closed; so is one that stops reading an
#: answer for this long.
REQUEST_S = 10.0
#: Connections open at once; more are closed as soon as they open (a browser keeps six at most).
MAX_CONNECTIONS = 100
