"""The HTTP edge of sessiond: turns requests into actor commands and events into SSE."""
