"""Adapters that speak the protocols frontends already use, over the same sessions.

Each module keeps its routes (``ROUTES``, a tuple of server/routing.py ``Route``) beside its
handlers; server/table.py takes them into the one table the app, the OpenAPI document, the token
scope and admission read.
"""
