"""The exec sink: a command run per event (sink.py), its arguments (args.py), its run folder
(rundir.py), the process with its limits (process.py) and the tail of its stderr (tail.py)."""

from falhook_sinks.exec.sink import ExecSink

__all__ = ["ExecSink"]
