"""``python -m packsync``: the same as the ``packsync`` command."""

from packsync.cli import main

main()
