"""What is decided and what is done.

``planner`` is pure: (source listing, recorded state, remote pack) → a plan. ``executor`` carries a
plan out. ``packs`` finds, creates and remembers a mapping's pack; ``metadata`` polls the AI
metadata; ``sync`` is the pipeline that ties them together for ``run`` and the daemon.
"""
