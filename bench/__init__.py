"""sessiond's load-testing bench: ``python -m bench SCENARIO`` (see docs/bench.md)."""
