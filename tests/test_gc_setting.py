"""``[server] gc_young_objects``: a serving process collects garbage far less often than
Python's default would, as its own /metrics show; 0 keeps Python's default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import HEADERS

_YOUNG = re.compile(r'^python_gc_collections_total\{generation="0"\} (\S+)$', re.M)


async def _young_collections_over_a_conversation(url: str) -> float:
    """How many youngest-generation collections the server ran while it answered 1 000 messages."""
    async with aiohttp.ClientSession(base_url=url, headers=HEADERS) as http:

        async def collections() -> float:
            async with http.get("/metrics") as resp:
                assert resp.status == 200
                found = _YOUNG.search(await resp.text())
            assert found is not None, "python_gc_collections_total is exported"
            return float(found.group(1))

        async with http.post("/v1/sessions", json={}) as resp:
            session = (await resp.json())["id"]
        before = await collections()
        for i in range(1000):
            async with http.post(f"/v1/sessions/{session}/messages", json={"content": f"message {i}"}) as resp:
                assert resp.status == 200, await resp.text()
        return await collections() - before


async def test_the_server_collects_garbage_rarely_by_default(server_process: Any, tmp_path: Path) -> None:
    default = server_process(data_dir=tmp_path / "default")
    tuned = await _young_collections_over_a_conversation(default.start())
    python = server_process(env={"SESSIOND_SERVER_GC_YOUNG_OBJECTS": "0"}, data_dir=tmp_path / "python")
    untuned = await _young_collections_over_a_conversation(python.start())
    # At 700, Python collects many times over 1 000 messages (each leaves its events and nodes behind).
    assert untuned >= 10, untuned
    assert tuned <= untuned / 5, (tuned, untuned)
