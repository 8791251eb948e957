"""The S3 sink, a module per job: ``sink.py`` (options and one delivery), ``transfer.py``
(PUTs and multipart uploads in the sink's threads), ``parts.py`` (a part read from the spool
file, and its CRC32), ``arrivals.py`` (files whole or still
arriving, one upload path), ``marker.py`` (``event.json``, the commit marker) and
``presign.py`` (links for the sinks after it)."""

from falhook_sinks.s3.parts import FilePart
from falhook_sinks.s3.sink import S3Options, S3Sink

__all__ = ["FilePart", "S3Options", "S3Sink"]
