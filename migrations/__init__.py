"""Alembic migrations for the recae store (installed as ``recae._migrations``)."""
