"""The agent side: the runner that builds a model's context, the router, tools, documents, backends."""
