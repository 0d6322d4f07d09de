"""What packsync remembers: the state (``store.State``, one SQLite file, WAL, private to the user — or a
PostgreSQL database shared by several machines, ``postgres``) and the lock that keeps it to one writer
(``lock``; in a shared state, one writer per pack: ``leases``). Importing this package loads no database
library.

The tables (``tables``, one SQLModel class each):

- ``files``    — per source and item key: the item's version (a token of the source's own: a file's
                 stat key, an Astria image's URL) and the content hash, so an unchanged tree is never
                 read again; a bad file's verdict is cached the same way.
- ``problems`` — per source: the files its last scan skipped, with the reason.
- ``sidecars`` — per source and file: the XMP sidecar packsync last wrote next to it.
- ``blobs``    — per content hash and upload name: the upload's CDN URL, its presigned URL while the
                 PUT is not confirmed, and whether it is. The same bytes under the same name are
                 uploaded once, for every pack.
- ``images``   — per pack image packsync added: its content, URL, name, AI metadata and the mapping
                 that owns it. Only these images are packsync's to delete, each by its owner.
- ``url_contents`` — per image URL packsync downloaded: the content it serves (or why not known), so
                 no URL is downloaded twice.
- ``pulled``   — per folder ``packsync pull`` wrote to: each file it wrote and the image it came from.
- ``mappings`` — per mapped source: the pack it syncs to, the source's own name (an Astria pack's
                 title) and how the last sync went.
- ``daemon``   — one row: what the running daemon is doing, for ``packsync status``.
- ``changes``  — one row: how often ``images``, ``blobs`` and ``url_contents`` changed (triggers count).
- ``settled``  — per source: the fingerprint of the inputs of its last plan that had nothing to do.
- ``meta``     — the program and schema version that wrote the file.
- ``leases``, ``sites`` — a shared state's only: who syncs which pack now (``leases``), and the machines
                 sharing it (``sites``). There, a source's rows are keyed by ``<site>:<label>``.

and the search indexes (``search``, SQLite's FTS5): ``image_text`` over ``images``, ``file_text`` over the
folders of ``files``' paths (schema 10); on PostgreSQL, its full-text search (``pg_search``).
"""
