"""Request and response Structs of the HTTP API, per resource."""
