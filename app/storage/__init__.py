"""Storage: SQLAlchemy engine, tables and repositories."""
