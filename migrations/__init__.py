"""Alembic migrations for the fedstore catalog (shipped in the wheel as fedstore_migrations)."""
