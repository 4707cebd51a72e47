"""Alembic migrations for the fedstore catalog (shipped in the wheel as fedstore.catalog.migrations)."""
