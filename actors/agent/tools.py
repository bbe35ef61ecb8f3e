"""Tools a model may call, and the built-in ones: calculator, current_time, search_documents.

A tool takes its arguments (a JSON object) and the session it works for, and returns text. A
tool that raises, or runs past the timeout, gives the model an error result instead; the task
goes on.
"""

from __future__ import annotations

import ast
import asyncio
import math
import operator
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from actors.agent.backends.base import ToolSpec
from actors.core.errors import InvalidRequestError
from actors.core.export import MAX_JSON_BYTES, check_json

if TYPE_CHECKING:
    from actors.agent.documents.library import DocumentLibrary

__all__ = [
    "Tool",
    "ToolBox",
    "ToolContext",
    "ToolError",
    "ToolFn",
    "builtin_tools",
    "calculate",
    "cap_output",
    "parse_arguments",
]

_MAX_OUTPUT_CHARS = 16_000


class ToolError(Exception):
    """A tool could not do what it was asked; the message goes to the model."""


class ToolContext(msgspec.Struct, frozen=True, kw_only=True):
    """The session a tool call works for."""

    session_id: str = ""
    end_user_id: str | None = None
    documents: list[str] = msgspec.field(default_factory=list)


ToolFn = Callable[[dict[str, Any], ToolContext], Awaitable[str]]


class Tool(msgspec.Struct, frozen=True):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments object
    fn: ToolFn

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)


class ToolBox:
    """The tools this server has, by name, and how one call of them runs."""

    def __init__(self, *, timeout: float, approval: dict[str, str] | None = None) -> None:
        self.timeout = timeout
        self.approval = dict(approval or {})  # tool name -> "always" | "never"
        self._tools: dict[str, Tool] = {}
        # MCP servers whose tools are named SERVER.TOOL: until a server's tools are listed (at
        # start), names in its namespace are taken on trust, so configured agents may name them.
        self._pending: set[str] = set()

    def expect_namespace(self, name: str) -> None:
        self._pending.add(name)

    def listed_namespace(self, name: str) -> None:
        self._pending.discard(name)

    def needs_approval(self, name: str, agent_approval: str = "never") -> bool:
        """A call of ``name`` waits for a person: the tool's own setting, else the agent's."""
        return self.approval.get(name, agent_approval) == "always"

    def register(self, tool: Tool) -> None:
        self._tools[tool.name] = tool

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def all(self) -> list[Tool]:
        return sorted(self._tools.values(), key=lambda t: t.name)

    def unknown(self, names: Iterable[str]) -> list[str]:
        return [n for n in names if n not in self._tools and n.partition(".")[0] not in self._pending]

    def specs(self, names: Iterable[str]) -> list[ToolSpec]:
        """The specs of ``names`` this server has (unknown names are left out)."""
        return [self._tools[n].spec for n in dict.fromkeys(names) if n in self._tools]

    async def run(self, name: str, arguments: str, ctx: ToolContext, active: Sequence[str]) -> tuple[str, bool]:
        """Run one call: (output, is_error). Never raises but for cancellation."""
        tool = self._tools.get(name)
        if tool is None or name not in active:
            return f"error: the tool {name!r} is not available in this session", True
        if len(arguments) > MAX_JSON_BYTES:
            return f"error: the arguments are larger than {MAX_JSON_BYTES} bytes", True
        try:
            args = msgspec.json.decode(arguments or "{}")
        except msgspec.DecodeError as exc:
            return f"error: the arguments are not valid JSON: {exc}", True
        except RecursionError:
            return "error: the arguments nest too deeply", True
        if not isinstance(args, dict):
            return "error: the arguments must be a JSON object", True
        try:
            check_json("the arguments", args)
        except InvalidRequestError as exc:
            return f"error: {exc}", True
        try:
            async with asyncio.timeout(self.timeout):
                output = await tool.fn(args, ctx)
        except TimeoutError:
            return f"error: the tool {name} did not answer within {self.timeout:g}s", True
        except asyncio.CancelledError:
            raise
        except ToolError as exc:
            return f"error: {exc}", True
        except Exception as exc:
            return f"error: the tool {name} failed: {type(exc).__name__}: {exc}", True
        return cap_output(output), False


def cap_output(output: str) -> str:
    """A tool's output as the model gets it: cut at a size a context can take."""
    if len(output) > _MAX_OUTPUT_CHARS:
        return output[:_MAX_OUTPUT_CHARS] + " [cut: the output was longer]"
    return output


def parse_arguments(text: str) -> dict[str, Any]:
    """Arguments for the ``tool.call`` event: the object, or ``{"raw": text}`` if it is not one
    (or is deeper or larger than any JSON a session keeps: the event is stored and replayed)."""
    if len(text) > MAX_JSON_BYTES:
        return {"raw": text[:MAX_JSON_BYTES]}
    try:
        value = msgspec.json.decode(text or "{}")
        if isinstance(value, dict):
            check_json("the arguments", value)
            return value
    except (msgspec.DecodeError, RecursionError, InvalidRequestError):
        pass
    return {"raw": text}


# -- calculator: arithmetic by walking the syntax tree, never eval ---------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPRESSION = 500
_MAX_EXPONENT = 1000
_MAX_INT_BITS = 4096


def _number(value: Any) -> int | float:
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise ToolError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    return value  # type: ignore[no-any-return]


def _walk(node: ast.AST) -> int | float:
    match node:
        case ast.Expression(body=body):
            return _walk(body)
        case ast.Constant(value=value) if type(value) in (int, float):
            return _number(value)
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            return _number(_UNARY[type(op)](_walk(operand)))
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            a, b = _walk(left), _walk(right)
            if isinstance(op, ast.Pow):
                if abs(b) > _MAX_EXPONENT:
                    raise ToolError(f"exponents above {_MAX_EXPONENT} are not supported")
                if isinstance(a, int) and isinstance(b, int) and a.bit_length() * b > _MAX_INT_BITS:
                    raise ToolError("the result is too large")  # refused before it is computed
            try:
                return _number(_BINARY[type(op)](a, b))
            except ZeroDivisionError:
                raise ToolError("division by zero") from None
            except OverflowError:
                raise ToolError("the result is too large") from None
        case _:
            raise ToolError(f"only numbers, + - * / // % ** and parentheses are allowed, not {type(node).__name__}")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses)."""
    if len(expression) > _MAX_EXPRESSION:
        raise ToolError(f"the expression is longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not an arithmetic expression: {exc.msg}") from None
    result = _walk(tree)
    if isinstance(result, complex):
        raise ToolError("the result is not a real number")
    return result


def _format(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".12g") if isinstance(value, float) else str(value)


def _string_arg(args: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = args.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ToolError(f"the argument {name!r} must be a non-empty string")
    return value


async def _calculator(args: dict[str, Any], ctx: ToolContext) -> str:
    expression = _string_arg(args, "expression")
    assert expression is not None
    return _format(calculate(expression))


async def _current_time(args: dict[str, Any], ctx: ToolContext) -> str:
    name = _string_arg(args, "timezone", required=False)
    if not name:
        now = datetime.now(UTC)
    else:
        try:
            now = datetime.now(ZoneInfo(name))
        except (ZoneInfoNotFoundError, ValueError):
            raise ToolError(f"unknown time zone {name!r} (use an IANA name such as Europe/Paris)") from None
    return f"{now.isoformat(timespec='seconds')} ({now.strftime('%A')}, {now.tzname()})"


def builtin_tools(library: DocumentLibrary) -> list[Tool]:
    async def search_documents(args: dict[str, Any], ctx: ToolContext) -> str:
        query = _string_arg(args, "query")
        assert query is not None
        limit = args.get("limit", 5)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 20:
            raise ToolError("the argument 'limit' must be an integer from 1 to 20")
        if not ctx.documents:
            return "No document is linked to this session."
        hits = await library.search(ctx.documents, query, limit)
        if not hits:
            return "Nothing in the linked documents matches that query."
        return "\n\n".join(f"[{h.name}] {h.text}" for h in hits)

    return [
        Tool(
            "calculator",
            "Evaluate an arithmetic expression exactly: numbers, + - * / // % ** and parentheses.",
            {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "for example (2 + 3) * 4 / 7"}},
                "required": ["expression"],
            },
            _calculator,
        ),
        Tool(
            "current_time",
            "The current date and time, in UTC or in the given IANA time zone.",
            {
                "type": "object",
                "properties": {"timezone": {"type": "string", "description": "for example Europe/Paris"}},
            },
            _current_time,
        ),
        Tool(
            "search_documents",
            "Search the documents linked to this conversation; returns the most relevant passages.",
            {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "what to look for"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 20, "description": "passages (default 5)"},
                },
                "required": ["query"],
            },
            search_documents,
        ),
    ]
