"""The Vercel AI SDK UI message stream protocol over a session (``useChat``, ``resume: true``).

``POST /v1/ai-sdk/chat`` takes the body DefaultChatTransport sends (``id`` is the session id)
and answers with the UI message stream of the task it starts; ``GET .../{id}/stream`` is what
``useChat`` calls on mount to resume (204 when no task runs); ``POST .../{id}/stop`` cancels,
keeping the partial; ``GET .../{id}/messages`` is the active path as ``UIMessage[]``.

One session event may become several UI chunks (the first delta after a tool result is
finish-step, start-step, text-start and text-delta). Each frame's SSE ``id:`` is the session
event id on the last chunk of an event and ``<id>.<k>`` on the k-th of the ones before it, so
a client cut between two of them resumes by ``Last-Event-ID`` with nothing lost or doubled:
the task is replayed through the same translation from its start and everything up to that
chunk is skipped.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from aiohttp import web

from actors.core.commands import (
    CancelTask,
    EditMessage,
    GetMessages,
    GetSession,
    GetTree,
    RegenerateMessage,
    SendMessage,
    Subscribe,
)
from actors.core.errors import ConflictError, InvalidRequestError
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
from actors.core.replies import TreeView
from actors.core.tree import Node
from server.appkeys import CONFIG
from server.protocols.common import (
    ResumePoint,
    active_path,
    bind_session,
    reconcile,
    resume_point,
    stream_translated,
    sub_id_frames,
    task_of,
)
from server.quota import turn_quota
from server.routes.common import ask
from server.routing import Route
from server.schema.common import decode_body, json_response
from server.tasks import admitted, admitted_command

__all__ = [
    "ROUTES",
    "UI_STREAM_HEADERS",
    "ChatBody",
    "StopOut",
    "UiMessageIn",
    "UiStreamTranslator",
    "chat",
    "messages",
    "resume",
    "stop",
    "ui_messages",
]

UI_STREAM_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
    "x-vercel-ai-ui-message-stream": "v1",
}

_BASE = "/v1/ai-sdk/chat"



class UiMessageIn(msgspec.Struct, kw_only=True):
    """A UIMessage as the client holds it; only its text parts matter to the session."""

    id: str = ""
    role: Literal["system", "user", "assistant"]
    parts: list[dict[str, Any]] = msgspec.field(default_factory=list)
    metadata: Any = None

    def text(self) -> str:
        return "".join(str(p.get("text", "")) for p in self.parts if p.get("type") == "text")


class ChatBody(msgspec.Struct, kw_only=True):
    """What DefaultChatTransport posts. Extra fields (the transport's ``body`` option) are
    the frontend's own and are ignored."""

    id: str
    messages: list[UiMessageIn]
    trigger: Literal["submit-message", "regenerate-message"] = "submit-message"
    messageId: str | None = None  # the protocol's spelling


# -- the stream ----------------------------------------------------------------------------


_enc = msgspec.json.Encoder()
_DONE = b"[DONE]"


class UiStreamTranslator:
    """One task as UI message chunks; ``after`` = (event id, chunk index) already delivered."""

    def __init__(self, task_id: str | None = None, after: ResumePoint | None = None) -> None:
        self.task_id = task_id
        self.after = after
        self.finished = False
        self._reply_id = ""
        self._text_id: str | None = None
        self._texts = 0
        self._new_step = False
        self._metadata: dict[str, Any] = {}

    def feed(self, seq: int, event: AnyEvent) -> bytes:
        if isinstance(event, TaskStarted) and self.task_id is None:
            self.task_id = event.task_id
        if self.task_id is None or task_of(event) != self.task_id:
            return b""  # another task's, or no task's (checkpoints)
        return self._frames(seq, self._chunks(event))

    def reset(self, seq: int, event: StreamReset) -> bytes:
        text = "the session no longer holds this answer's events; reload its messages"
        return self._frames(seq, [{"type": "error", "errorText": text}, None])

    def _frames(self, seq: int, chunks: list[dict[str, Any] | None]) -> bytes:
        return sub_id_frames(seq, [_DONE if c is None else _enc.encode(c) for c in chunks], self.after)

    def _close_text(self, chunks: list[dict[str, Any] | None]) -> None:
        if self._text_id is not None:
            chunks.append({"type": "text-end", "id": self._text_id})
            self._text_id = None

    def _step(self, chunks: list[dict[str, Any] | None]) -> None:
        # A model call after tool results is a new step, as the SDK's own server makes it.
        if self._new_step:
            chunks += [{"type": "finish-step"}, {"type": "start-step"}]
            self._new_step = False

    def _chunks(self, event: AnyEvent) -> list[dict[str, Any] | None]:
        chunks: list[dict[str, Any] | None] = []
        match event:
            case TaskStarted():
                self._reply_id = event.reply_id
                meta = {"task_id": event.task_id}
                chunks += [{"type": "start", "messageId": event.reply_id, "messageMetadata": meta},
                           {"type": "start-step"}]
            case MessageDelta():
                self._step(chunks)
                if self._text_id is None:
                    self._texts += 1
                    self._text_id = f"{self._reply_id}-text-{self._texts}"
                    chunks.append({"type": "text-start", "id": self._text_id})
                chunks.append({"type": "text-delta", "id": self._text_id, "delta": event.delta})
            case ToolCall():
                self._close_text(chunks)
                self._step(chunks)
                chunks.append({"type": "tool-input-available", "toolCallId": event.call_id, "toolName": event.name,
                               "input": event.arguments, "dynamic": True})
            case ToolResult():
                if event.is_error:
                    chunks.append({"type": "tool-output-error", "toolCallId": event.call_id,
                                   "errorText": event.output, "dynamic": True})
                else:
                    chunks.append({"type": "tool-output-available", "toolCallId": event.call_id,
                                   "output": event.output, "dynamic": True})
                self._new_step = True
            case MessageCompleted():
                self._close_text(chunks)
                chunks.append({"type": "finish-step"})
                self._new_step = False
                self._metadata = _metadata(event.message)
            case TaskCompleted():
                chunks += [{"type": "finish", "finishReason": "stop", "messageMetadata": self._metadata}, None]
                self.finished = True
            case TaskCancelled():
                chunks += [{"type": "abort", "reason": "cancelled"}, None]
                self.finished = True
            case TaskFailed() | TaskInterrupted():
                chunks += [{"type": "error", "errorText": event.error},
                           {"type": "finish", "finishReason": "error", "messageMetadata": self._metadata}, None]
                self.finished = True
            case _:
                pass
        return chunks


def _metadata(node: Node) -> dict[str, Any]:
    meta: dict[str, Any] = {"status": node.status, "created_at": node.created_at}
    if node.task_id is not None:
        meta["task_id"] = node.task_id
    if node.model is not None:
        meta["model"] = node.model
    if node.usage is not None:
        meta["usage"] = msgspec.to_builtins(node.usage)
    return meta


# -- history -------------------------------------------------------------------------------


def ui_messages(nodes: list[Node]) -> list[dict[str, Any]]:
    """The active path as UIMessage[]: tool calls as dynamic-tool parts, then the text."""
    out: list[dict[str, Any]] = []
    for node in nodes:
        parts: list[dict[str, Any]] = []
        if node.role == "assistant":
            parts.append({"type": "step-start"})
            for use in node.tool_calls or []:
                part: dict[str, Any] = {"type": "dynamic-tool", "toolName": use.name, "toolCallId": use.call_id,
                                        "input": use.arguments}
                if use.output is None:
                    part["state"] = "input-available"
                elif use.is_error:
                    part |= {"state": "output-error", "errorText": use.output}
                else:
                    part |= {"state": "output-available", "output": use.output}
                parts.append(part)
        if node.content or node.role == "user":
            text_part = {"type": "text", "text": node.content}
            if node.role == "assistant":
                text_part["state"] = "streaming" if node.status == "running" else "done"
            parts.append(text_part)
        out.append({"id": node.id, "role": node.role, "metadata": _metadata(node), "parts": parts})
    return out


# -- handlers ------------------------------------------------------------------------------


def _command(body: ChatBody, view: TreeView) -> SendMessage | EditMessage | RegenerateMessage:
    """What this request asks of the session (see ``reconcile`` for a sent message)."""
    msgs = body.messages
    if body.trigger == "regenerate-message":
        nodes = {n.id: n for n in view.nodes}
        target = nodes.get(body.messageId or "")
        if target is None:
            # The client dropped the answer from its list: it was the one at that place.
            path = active_path(view)
            i = len(msgs)
            if i < len(path) and path[i].role == "assistant":
                target = path[i]
        if target is None or target.role != "assistant":
            raise InvalidRequestError("regenerate-message needs messageId of an assistant message of this session")
        return RegenerateMessage(message_id=target.id, stream=True)
    if not msgs or msgs[-1].role != "user":
        raise InvalidRequestError("submit-message needs messages ending with the user message to send")
    content = msgs[-1].text()
    if not content.strip():
        raise InvalidRequestError("the last user message has no text part")
    # sendMessage({messageId}) replaces that user message: an edit. Without it, a new message.
    edit = body.messageId is not None and body.messageId == msgs[-1].id
    return reconcile(view, [(m.id, m.role) for m in msgs], content, edit=edit)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, ChatBody, empty_ok=False)
    await bind_session(request, body.id)  # the session comes in the body, not the path
    view = await ask(request, GetTree())
    cmd = _command(body, view)
    with admitted_command(request, cmd):
        handle = await (await turn_quota(request)).ask(cmd)
        assert handle.subscription is not None
        translator = UiStreamTranslator(handle.task_id)
        return await stream_translated(request, handle.subscription, request.app[CONFIG].streams, translator,
                                       UI_STREAM_HEADERS)


async def resume(request: web.Request) -> web.StreamResponse:
    after = resume_point(request)
    with admitted(request, starts_task=False, opens_stream=True):
        record = await ask(request, GetSession())
        if not record.running:
            return web.Response(status=204)
        # From the running task's start, so the translation is the one the client saw.
        sub = await ask(request, Subscribe(last_event_id=None))
        translator = UiStreamTranslator(None, after)
        return await stream_translated(request, sub, request.app[CONFIG].streams, translator, UI_STREAM_HEADERS)


class StopOut(msgspec.Struct):
    task_id: str | None
    status: Literal["cancelled", "idle"]


async def stop(request: web.Request) -> web.Response:
    try:
        task_id = await ask(request, CancelTask())
    except ConflictError:
        # useChat's stop() races the end of the answer: nothing left to stop is not an error.
        return json_response(StopOut(None, "idle"))
    return json_response(StopOut(task_id, "cancelled"))


async def messages(request: web.Request) -> web.Response:
    page = await ask(request, GetMessages(limit=1 << 30))
    return json_response(ui_messages([node for node, _, _ in page.items]))


_CHUNKS = {
    "type": "string",
    "description": "The UI message stream: `id: <event id>[.k]` and `data: <UIMessageChunk JSON>` frames "
                   "(start, start-step, text-start/-delta/-end, tool-input-available, tool-output-available, "
                   "finish-step, finish, error, abort), then `data: [DONE]`.",
}
_UI_MESSAGES = {"type": "array", "items": {"type": "object", "required": ["id", "role", "parts"]}}

ROUTES: tuple[Route, ...] = (
    Route("POST", _BASE, chat, "AI SDK: send, edit or regenerate; answered as a UI message stream",
          body=ChatBody, body_required=True, task="always", sse=True, token=True, events=_CHUNKS, tag="protocols"),
    Route("GET", _BASE + "/{session_id}/stream", resume,
          "AI SDK: the running task's stream from its start or Last-Event-ID (204 when none)",
          sse=True, token=True, events=_CHUNKS, responses={"204": None}, tag="protocols"),
    Route("POST", _BASE + "/{session_id}/stop", stop, "AI SDK: cancel the running task, keeping the partial answer",
          reply=StopOut, token=True, tag="protocols"),
    Route("GET", _BASE + "/{session_id}/messages", messages, "AI SDK: the active path as UIMessage[] (to seed useChat)",
          reply=_UI_MESSAGES, token=True, tag="protocols"),
)
