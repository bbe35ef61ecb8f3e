"""Documents: text extraction, passage search, and the library the runner reads."""
