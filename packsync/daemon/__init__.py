"""What keeps running: the daemon's lifecycle and loop (``service``), when each folder syncs
(``schedule``, fed by the pure change aggregator, ``aggregator``, and the folder watchers, ``watcher``),
a round run through the pipeline (``rounds``), the metadata loop (``metadata``), what it tells
``status``, systemd and the page (``status``, ``systemd``), what it tells a person (``alerts``), SIGHUP
(``reload``), what makes it a process (``process``) and every delay it waits (``timing``).
"""
