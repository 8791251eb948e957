"""The process tier: what needs a process of its own: kill -9 and crash recovery, signals
and shutdown, the command line, scale-out on PostgreSQL, the browser, the packaging."""
