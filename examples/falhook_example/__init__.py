"""An example falhook custom handler package (see handler.py and docs/sinks.md)."""
