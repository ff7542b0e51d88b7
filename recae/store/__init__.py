"""The store: tables and migrations, dataset formats and downloads, ingest, and the rating matrix read from it."""
