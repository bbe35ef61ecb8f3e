"""The `sessiond` commands: serve, keys, export/import, cluster, doctor, chat (main.py parses)."""
