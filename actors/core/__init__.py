"""The pure core: no asyncio, no I/O, no wire format; importing it loads nothing else."""
