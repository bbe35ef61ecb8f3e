"""Middlewares of the HTTP edge, one per file; each reads the matched route."""
