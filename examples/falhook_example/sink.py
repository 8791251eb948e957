"""The same handler, packaged: register ``factory`` under the ``falhook.sinks`` entry-point
group (see ``examples/pyproject.toml``) and configure it by its type::

    [sinks.manifest]
    type = "manifest"
    path = "manifest.jsonl"
"""

from __future__ import annotations

from falhook.sinks import as_sink_factory
from falhook_example.handler import record

factory = as_sink_factory(record)  # same keyword-option rules as type = "python"
