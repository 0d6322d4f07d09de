"""What shows it: the typed status read model (``status``) and its renderers (``text``, ``json``),
plus the terminal progress line (``progress``). Views read; they never sync.
"""
