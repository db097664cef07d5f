"""The catalog: SQLAlchemy models, sessions and Alembic migrations (SQLite or PostgreSQL).

Knows rows, never bytes: imports only domain.
"""
