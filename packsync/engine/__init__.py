"""What is decided and what is done: observe → plan → execute.

``planner`` (and ``pull_plan`` for ``packsync pull``) is pure: (what a source holds, what the state
recorded, what the pack holds) → a plan of ``actions``, each a small value that runs itself and records
what was confirmed. ``executor`` is the only writer: it runs a plan's actions by phase. ``sync`` observes
(scans, pack reads through ``packs``, the state) and ties it together for ``run`` and the daemon;
``changes`` plans a daemon sync from the changed paths alone; ``metadata`` polls the AI metadata;
``sidecars`` plans and writes XMP sidecars; ``progress`` is what the engine reports progress through.
"""
