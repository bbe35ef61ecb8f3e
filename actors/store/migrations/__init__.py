"""Schema steps, numbered: SQLite by PRAGMA user_version, PostgreSQL by a version table."""
