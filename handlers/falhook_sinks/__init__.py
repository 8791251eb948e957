"""falhook_sinks: the sink API's implementation (base.py, options.py, registry.py), the
loader every table of the config is read with (tables.py, falhook's own settings included),
and the built-in sinks, each registered under the ``falhook.sinks`` entry-point group like a
user's.

Users import the API from ``falhook.sinks``; nothing here imports falhook's core.
"""
