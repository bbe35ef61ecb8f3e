"""The Responses stream of one task: session events in, OpenAI stream events out.

``sequence_number`` is the session event id that produced an event; the events one session
event yields share it and go out in one write. A resume (``starting_after=N``) replays the task
through the same translation and sends what came after event N.
"""

from __future__ import annotations

from typing import Any

import msgspec

from actors.core.events import (
    AnyEvent,
    MessageCompleted,
    MessageDelta,
    StreamReset,
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskInterrupted,
    TaskStarted,
    ToolCall,
    ToolResult,
)
from actors.core.records import SessionRecord
from actors.core.tree import Node, ToolUse
from server.protocols.common import task_of
from server.protocols.openai_shapes import assistant_message, mcp_item, output_text, response_out

__all__ = ["ResponsesTranslator"]

_enc = msgspec.json.Encoder()


class ResponsesTranslator:
    """One task as Responses stream events; ``after``: the event id already delivered."""

    def __init__(self, record: SessionRecord, task_id: str, *, previous: str | None, background: bool | None,
                 created_at: int, after: int | None = None) -> None:
        self.record = record
        self.task_id = task_id
        self.previous = previous
        self.background = background
        self.created_at = created_at
        self.after = after
        self.finished = False
        self._reply_id = ""
        self._outputs = 0
        self._runs = 0
        self._msg: tuple[str, int] | None = None  # (item id, output index) of the open text
        self._text: list[str] = []
        self._tools: dict[str, tuple[int, ToolUse]] = {}
        self._final: Node | None = None

    def _response(self, node: Node | None, status: str | None = None, error: str | None = None) -> dict[str, Any]:
        out = response_out(self.record, self.task_id, node, previous=self.previous, background=self.background,
                           error=error, created_at=self.created_at)
        if status is not None:
            out["status"] = status
        return out

    def feed(self, seq: int, event: AnyEvent) -> bytes:
        if task_of(event) != self.task_id:
            return b""
        events = self._events(event)
        if self.after is not None and seq <= self.after:
            return b""
        return b"".join(self._frame(seq, e) for e in events)

    def reset(self, seq: int, event: StreamReset) -> bytes:
        return self._frame(seq, {"type": "error", "code": "stream_reset", "param": None,
                                 "message": "the session no longer holds this response's events; retrieve it"})

    @staticmethod
    def _frame(seq: int, event: dict[str, Any]) -> bytes:
        event["sequence_number"] = seq
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event["type"].encode(), _enc.encode(event))

    def _open_text(self, out: list[dict[str, Any]]) -> tuple[str, int]:
        if self._msg is None:
            self._runs += 1
            item_id = self._reply_id if self._runs == 1 else f"{self._reply_id}-{self._runs}"
            self._msg = (item_id, self._outputs)
            self._outputs += 1
            self._text = []
            item = assistant_message(item_id, "", "in_progress")
            item["content"] = []
            out.append({"type": "response.output_item.added", "output_index": self._msg[1], "item": item})
            out.append({"type": "response.content_part.added", "item_id": item_id, "output_index": self._msg[1],
                        "content_index": 0, "part": output_text("")})
        return self._msg

    def _close_text(self, out: list[dict[str, Any]]) -> None:
        if self._msg is None:
            return
        item_id, index = self._msg
        text = "".join(self._text)
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        out.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
        out.append({"type": "response.content_part.done", **where, "part": output_text(text)})
        out.append({"type": "response.output_item.done", "output_index": index,
                    "item": assistant_message(item_id, text, "completed")})
        self._msg = None

    def _delta(self, out: list[dict[str, Any]], delta: str) -> None:
        item_id, index = self._open_text(out)
        self._text.append(delta)
        out.append({"type": "response.output_text.delta", "item_id": item_id, "output_index": index,
                    "content_index": 0, "delta": delta, "logprobs": []})

    def _events(self, event: AnyEvent) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        match event:
            case TaskStarted():
                self._reply_id = event.reply_id
                started = self._response(None, "in_progress")
                out.append({"type": "response.created", "response": started})
                out.append({"type": "response.in_progress", "response": started})
            case MessageDelta():
                self._delta(out, event.delta)
            case ToolCall():
                self._close_text(out)
                use = ToolUse(event.call_id, event.name, event.arguments)
                self._tools[event.call_id] = (self._outputs, use)
                out.append({"type": "response.output_item.added", "output_index": self._outputs,
                            "item": mcp_item(use, done=False) | {"status": "in_progress"}})
                self._outputs += 1
            case ToolResult():
                index, use = self._tools.get(event.call_id, (self._outputs, ToolUse(event.call_id, "", {})))
                use.output, use.is_error = event.output, event.is_error
                out.append({"type": "response.output_item.done", "output_index": index, "item": mcp_item(use)})
            case MessageCompleted():
                if self._runs == 0 and event.message.content:
                    # The log came back from the store without its deltas: the text in one piece.
                    self._delta(out, event.message.content)
                self._close_text(out)
                self._final = event.message
            case TaskCompleted():
                out.append({"type": "response.completed", "response": self._response(self._final)})
                self.finished = True
            case TaskCancelled():
                # The SDK has no cancelled event: incomplete, with the response's status cancelled.
                out.append({"type": "response.incomplete", "response": self._response(self._final, "cancelled")})
                self.finished = True
            case TaskFailed() | TaskInterrupted():
                failed = self._response(self._final, "failed", event.error)
                failed["error"] = {"code": "server_error", "message": event.error}
                out.append({"type": "response.failed", "response": failed})
                self.finished = True
            case _:
                pass
        return out
