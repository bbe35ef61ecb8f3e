"""Cluster mode: session leases, forwarding to the owner, Redis Streams fan-out."""
