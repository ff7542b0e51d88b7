"""The store: tables and migrations (db), dataset formats and downloads (datasets), ingest (parse -> ingest ->
writers), and the rating matrix (matrix) read by the fast readers (readers). Every dialect-specific SQL line
of recae lives in this package."""
