"""Webhooks: the deliverer that sends the durable outbox's rows to the configured endpoints."""
