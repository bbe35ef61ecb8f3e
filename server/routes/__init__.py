"""HTTP handlers, one module per resource; the table of routes is server/table.py."""
