"""Alembic revision scripts of the run store."""
