"""The core of sessiond: session actors, their registry and their store. No HTTP edge in here.

The package re-exports nothing: importing ``actors.core`` must load no asyncio and no I/O
library, so every name is imported from the module that defines it.
"""
