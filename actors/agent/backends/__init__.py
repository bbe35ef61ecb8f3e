"""Model backends: the OpenAI-compatible and Ollama HTTP clients, the simulated model, their shared loop."""
