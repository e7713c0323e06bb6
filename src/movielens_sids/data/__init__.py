"""The MovieLens data layer: the variant table (``registry``), downloads (``fetch``) and the readers of the
MovieLens files (``catalog``; the stage that writes ``catalog.parquet`` is ``stages.catalog``). Network
I/O happens only in ``fetch``.

May import: nothing.
"""
