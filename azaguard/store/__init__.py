"""The clinic store: SQLAlchemy tables, repository functions and Alembic migrations.

SQLite file by default, PostgreSQL when AZAGUARD_DATABASE_URL says so; one schema for both.
"""
