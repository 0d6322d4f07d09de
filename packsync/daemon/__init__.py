"""What keeps running: the daemon loop (``service``), the pure change aggregator it feeds
(``aggregator``), the folder watchers (``watcher``) and systemd's notify protocol (``notify``).
"""
