"""What packsync remembers: the SQLite state (``store``) and the lock that keeps it to one writer (``lock``)."""
