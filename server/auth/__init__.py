"""Who may call: API keys, session tokens (JWT + rotating refresh tokens), guests, rate limits."""
