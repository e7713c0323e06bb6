"""The MovieLens data layer: the variant table (``registry``), downloads (``fetch``) and ``catalog.parquet``
(``catalog``). Network I/O happens only in ``fetch``."""
