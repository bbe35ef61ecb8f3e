"""AG-UI over a session: ``POST /v1/ag-ui`` (RunAgentInput, ``threadId`` = session id) and
``GET /v1/ag-ui/{threadId}/stream`` (resume by ``Last-Event-ID``: sessiond's extension).

A run is a task. The client's ``messages`` are reconciled with the stored tree: the trailing
user message is sent (an unchanged prefix is not sent again; a changed stored one is an
edit). The run's events are AG-UI's: RUN_STARTED, TEXT_MESSAGE_START/CONTENT/END,
TOOL_CALL_START/ARGS/END/RESULT for the session's own (server-side) tools, then
MESSAGES_SNAPSHOT of the active path with sessiond's ids (after RUN_STARTED, and again at the
end), and RUN_FINISHED or RUN_ERROR. Each
frame carries sessiond's ``id:`` (``N.K`` for the frames before the last of one session event,
as in the AI SDK adapter), so a cut stream resumes exactly.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from aiohttp import web

from actors.core.commands import GetSession, GetTree, Subscribe
from actors.core.errors import InvalidRequestError
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
from server.schema.common import decode_body
from server.tasks import admitted, admitted_command

__all__ = [
    "AG_UI_HEADERS",
    "ROUTES",
    "AgUiMessage",
    "AgUiTranslator",
    "RunAgentInput",
    "resume",
    "run",
    "snapshot_messages",
]

AG_UI_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


class AgUiMessage(msgspec.Struct, kw_only=True):
    id: str
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(str(p.get("text", "")) for p in self.content or [] if p.get("type") == "text")


class RunAgentInput(msgspec.Struct, kw_only=True):
    """What HttpAgent posts. ``tools``, ``context``, ``state`` and ``forwardedProps`` are the
    frontend's; the session's agent, tools and history decide the answer."""

    threadId: str  # the protocol's spelling
    runId: str
    messages: list[AgUiMessage]
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    context: list[dict[str, Any]] = msgspec.field(default_factory=list)
    state: Any = None
    forwardedProps: Any = None
    parentRunId: str | None = None
    protocolVersion: str | None = None


_enc = msgspec.json.Encoder()


def _tool_message_id(call_id: str) -> str:
    return f"tool_{call_id}"


def snapshot_messages(nodes: list[Node]) -> list[dict[str, Any]]:
    """Messages of the active path as AG-UI messages: an answer with its tool calls, then
    one tool message per result."""
    out: list[dict[str, Any]] = []
    for node in nodes:
        if node.role == "user":
            out.append({"id": node.id, "role": "user", "content": node.content})
            continue
        message: dict[str, Any] = {"id": node.id, "role": "assistant", "content": node.content}
        uses = node.tool_calls or []
        if uses:
            message["toolCalls"] = [{"id": u.call_id, "type": "function",
                                     "function": {"name": u.name, "arguments": json.dumps(u.arguments)}}
                                    for u in uses]
        out.append(message)
        for u in uses:
            if u.output is not None:
                tool: dict[str, Any] = {"id": _tool_message_id(u.call_id), "role": "tool", "toolCallId": u.call_id,
                                        "content": u.output}
                if u.is_error:
                    tool["error"] = u.output
                out.append(tool)
    return out


class AgUiTranslator:
    """One task as AG-UI events. ``history`` is the active path up to the user message the
    task answers (for the closing MESSAGES_SNAPSHOT); ``after`` what was delivered already."""

    def __init__(self, session_id: str, task_id: str, history: list[Node], after: ResumePoint | None = None) -> None:
        self.session_id = session_id
        self.task_id = task_id
        self.history = history
        self.after = after
        self.finished = False
        self._reply_id = ""
        self._text_id: str | None = None
        self._runs = 0
        self._final: Node | None = None

    def feed(self, seq: int, event: AnyEvent) -> bytes:
        if task_of(event) != self.task_id:
            return b""
        return sub_id_frames(seq, [_enc.encode(e) for e in self._events(event)], self.after)

    def reset(self, seq: int, event: StreamReset) -> bytes:
        error = {"type": "RUN_ERROR", "code": "stream_reset",
                 "message": "the session no longer holds this run's events; reload the thread"}
        return sub_id_frames(seq, [_enc.encode(error)], None)

    def _run(self) -> dict[str, str]:
        return {"threadId": self.session_id, "runId": self.task_id}

    def _close_text(self, out: list[dict[str, Any]]) -> None:
        if self._text_id is not None:
            out.append({"type": "TEXT_MESSAGE_END", "messageId": self._text_id})
            self._text_id = None

    def _text(self, out: list[dict[str, Any]], delta: str) -> None:
        if self._text_id is None:
            self._runs += 1
            self._text_id = self._reply_id if self._runs == 1 else f"{self._reply_id}-{self._runs}"
            out.append({"type": "TEXT_MESSAGE_START", "messageId": self._text_id, "role": "assistant"})
        out.append({"type": "TEXT_MESSAGE_CONTENT", "messageId": self._text_id, "delta": delta})

    def _snapshot(self) -> dict[str, Any]:
        nodes = [*self.history, *([self._final] if self._final is not None else [])]
        return {"type": "MESSAGES_SNAPSHOT", "messages": snapshot_messages(nodes)}

    def _usage(self) -> list[dict[str, Any]]:
        final = self._final
        if final is None or final.usage is None:
            return []
        u = final.usage
        entry: dict[str, Any] = {"inputTokens": u.prompt, "outputTokens": u.completion, "totalTokens": u.total}
        if final.model:
            entry["model"] = final.model
        return [entry]

    def _events(self, event: AnyEvent) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        match event:
            case TaskStarted():
                self._reply_id = event.reply_id
                # The thread as stored, with sessiond's ids, before the answer: the client's own
                # copy of the new user message (an id of its own) gives way to the stored one, so
                # the answer streamed next lands after it.
                out += [{"type": "RUN_STARTED", **self._run()}, self._snapshot()]
            case MessageDelta():
                self._text(out, event.delta)
            case ToolCall():
                self._close_text(out)
                if self._runs == 0:
                    self._runs = 1  # the reply's own id now names the message the calls belong to
                out += [
                    {"type": "TOOL_CALL_START", "toolCallId": event.call_id, "toolCallName": event.name,
                     "parentMessageId": self._reply_id},
                    {"type": "TOOL_CALL_ARGS", "toolCallId": event.call_id, "delta": json.dumps(event.arguments)},
                    {"type": "TOOL_CALL_END", "toolCallId": event.call_id},
                ]
            case ToolResult():
                out.append({"type": "TOOL_CALL_RESULT", "messageId": _tool_message_id(event.call_id),
                            "toolCallId": event.call_id, "content": event.output, "role": "tool"})
            case MessageCompleted():
                if self._runs == 0 and event.message.content:
                    self._text(out, event.message.content)  # a log reloaded without its deltas
                self._close_text(out)
                self._final = event.message
            case TaskCompleted():
                out += [self._snapshot(),
                        {"type": "RUN_FINISHED", **self._run(), "outcome": {"type": "success"}, "usage": self._usage()}]
                self.finished = True
            case TaskCancelled():
                out += [self._snapshot(),
                        {"type": "RUN_FINISHED", **self._run(), "outcome": {"type": "cancelled"},
                         "usage": self._usage()}]
                self.finished = True
            case TaskFailed() | TaskInterrupted():
                code = "task_failed" if isinstance(event, TaskFailed) else "task_interrupted"
                out += [self._snapshot(), {"type": "RUN_ERROR", "message": event.error, "code": code}]
                self.finished = True
            case _:
                pass
        return out


def _history(view: TreeView, reply_id: str) -> list[Node]:
    """The active path up to (not including) ``reply_id``."""
    nodes = {n.id: n for n in view.nodes}
    path: list[Node] = []
    at = nodes[reply_id].parent_id if reply_id in nodes else None
    while at is not None:
        path.append(nodes[at])
        at = nodes[at].parent_id
    path.reverse()
    return path


async def run(request: web.Request) -> web.StreamResponse:
    body = await decode_body(request, RunAgentInput, empty_ok=False)
    await bind_session(request, body.threadId)  # the session comes in the body, not the path
    view = await ask(request, GetTree())
    msgs = [m for m in body.messages if m.role in ("user", "assistant")]
    if not msgs or msgs[-1].role != "user":
        raise InvalidRequestError("messages must end with the user message to send (a run answers a new message)")
    content = msgs[-1].text()
    if not content.strip():
        raise InvalidRequestError("the last user message has no text")
    if msgs[-1].id in {n.id for n in view.nodes} and msgs[-1].text() == next(
        n.content for n in view.nodes if n.id == msgs[-1].id
    ):
        raise InvalidRequestError(f"message {msgs[-1].id} is answered already; add a new user message")
    cmd = reconcile(view, [(m.id, m.role) for m in msgs], content)
    with admitted_command(request, cmd):
        handle = await (await turn_quota(request)).ask(cmd)
        assert handle.subscription is not None
        view = await ask(request, GetTree())
        reply = next(n for n in view.nodes if n.task_id == handle.task_id and n.role == "assistant")
        translator = AgUiTranslator(body.threadId, handle.task_id, _history(view, reply.id))
        return await stream_translated(request, handle.subscription, request.app[CONFIG].streams, translator,
                                       AG_UI_HEADERS)


async def resume(request: web.Request) -> web.StreamResponse:
    after = resume_point(request)
    sid = request.match_info["session_id"]
    with admitted(request, starts_task=False, opens_stream=True):
        record = await ask(request, GetSession())
        running = next((r for r in record.running if r.reply_id), None)
        if running is None:
            return web.Response(status=204)
        view = await ask(request, GetTree())
        assert running.reply_id is not None
        # From the running task's start, so the translation is the one the client saw.
        sub = await ask(request, Subscribe(last_event_id=None))
        translator = AgUiTranslator(sid, running.task_id, _history(view, running.reply_id), after)
        return await stream_translated(request, sub, request.app[CONFIG].streams, translator, AG_UI_HEADERS)


_EVENTS = {
    "type": "string",
    "description": "AG-UI events: `id: <event id>[.k]` and `data: <event JSON>` frames (RUN_STARTED, "
                   "TEXT_MESSAGE_START/CONTENT/END, TOOL_CALL_START/ARGS/END/RESULT, MESSAGES_SNAPSHOT, "
                   "RUN_FINISHED or RUN_ERROR).",
}

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/ag-ui", run, "AG-UI: run the agent on the thread's new user message",
          body=RunAgentInput, body_required=True, task="always", sse=True, token=True, events=_EVENTS,
          tag="protocols"),
    Route("GET", "/v1/ag-ui/{session_id}/stream", resume,
          "AG-UI: the running run's events from its start or Last-Event-ID (204 when none)",
          sse=True, token=True, events=_EVENTS, responses={"204": None}, tag="protocols"),
)
