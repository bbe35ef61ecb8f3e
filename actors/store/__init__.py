"""Durable stores: the Store protocols (base.py), SQLite (the default) and PostgreSQL."""
