"""The retention sweeper's query, in both stores: the sessions whose rule is due, by index.

One query per kind of rule, each an index range read oldest first (schema step "retention"):

- a session's own retention: ``due_at <= now`` (``due_at`` is written with the row);
- temporary sessions: a partial index on ``last_active_at``;
- an agent's rule: ``(agent_id, last_active_at)``; a namespace's rule:
  ``(namespace, last_active_at)``, leaving out the sessions an agent rule or their own covers.

A keep_latest rule only finds sessions with more messages than it keeps, so a session it
trimmed is not found again until it grows. The actor settles the rule again before acting;
the sessions the sweeper postponed (in use) are left out for a while, so that a batch full of
busy sessions cannot hold back the others.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from actors.core.retention import ExpiredRow, ExpiryQuery, Retention

__all__ = ["POSTGRES", "SQLITE", "Dialect", "expired_sessions"]

_Fetch = Callable[[str, list[Any]], Awaitable[list[Any]]]


class Dialect:
    """How one store writes the expressions its indexes are built on."""

    def __init__(self, *, numbered: bool, temporary: str, not_temporary: str, agent: str, count: str,
                 own_action: str, own_keep: str) -> None:
        self.numbered = numbered  # $1, $2 (PostgreSQL) rather than ? (SQLite)
        self.temporary = temporary
        self.not_temporary = not_temporary
        self.agent = agent
        self.count = count
        self.own_action = own_action
        self.own_keep = own_keep


SQLITE = Dialect(
    numbered=False,
    temporary="json_extract(body, '$.temporary') = 1",
    not_temporary="json_extract(body, '$.temporary') IS NOT 1",
    agent="json_extract(body, '$.agent_id')",
    count="json_extract(body, '$.message_count')",
    own_action="json_extract(body, '$.retention.action')",
    own_keep="json_extract(body, '$.retention.keep_latest')",
)
POSTGRES = Dialect(
    numbered=True,
    temporary="(body->>'temporary') = 'true'",
    not_temporary="(body->>'temporary') IS DISTINCT FROM 'true'",
    agent="(body->>'agent_id')",
    count="(body->>'message_count')::int",
    own_action="(body->'retention'->>'action')",
    own_keep="(body->'retention'->>'keep_latest')::int",
)


class _Sql:
    """One statement and its parameters, with placeholders in the dialect's style."""

    def __init__(self, d: Dialect) -> None:
        self.d = d
        self.params: list[Any] = []
        self.sql = ""

    def p(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}" if self.d.numbered else "?"


def _select(d: Dialect) -> str:
    return f"SELECT id, namespace, {d.agent} FROM sessions WHERE "


def _skip(s: _Sql, q: ExpiryQuery) -> str:
    if not q.skip:
        return ""
    return f" AND id NOT IN ({', '.join(s.p(sid) for sid in q.skip)})"


def _rule_sql(d: Dialect, q: ExpiryQuery, rule: Retention, scope: str, value: str, limit: int) -> _Sql:
    s = _Sql(d)
    column = d.agent if scope == "agent" else "namespace"
    where = [f"{column} = {s.p(value)}", f"last_active_at < {s.p(q.before(rule.ttl_seconds))}",
             "due_at IS NULL", d.not_temporary]
    if rule.action == "keep_latest":
        where.append(f"{d.count} > {s.p(rule.keep_latest or 0)}")
    if scope == "namespace" and q.rules.agents:
        # A session whose agent has a rule follows that rule, not its namespace's.
        marks = ", ".join(s.p(a) for a in q.rules.agents)
        where.append(f"({d.agent} IS NULL OR {d.agent} NOT IN ({marks}))")
    s.sql = _select(d) + " AND ".join(where) + _skip(s, q) + f" ORDER BY last_active_at LIMIT {s.p(limit)}"
    return s


def _statements(d: Dialect, q: ExpiryQuery, limit: int) -> list[_Sql]:
    own = _Sql(d)
    own.sql = (
        _select(d) + f"due_at <= {own.p(q.now)} AND ({d.own_action} = 'delete' OR {d.count} > {d.own_keep})"
        + _skip(own, q) + f" ORDER BY due_at LIMIT {own.p(limit)}"
    )
    temp = _Sql(d)
    temp.sql = (
        _select(d) + f"{d.temporary} AND last_active_at < {temp.p(q.before(q.rules.temporary_ttl_seconds))}"
        + _skip(temp, q) + f" ORDER BY last_active_at LIMIT {temp.p(limit)}"
    )
    out = [own, temp]
    out += [_rule_sql(d, q, rule, "agent", agent, limit) for agent, rule in q.rules.agents.items()]
    out += [_rule_sql(d, q, rule, "namespace", ns, limit) for ns, rule in q.rules.namespaces.items()]
    return out


async def expired_sessions(fetch: _Fetch, dialect: Dialect, query: ExpiryQuery) -> list[ExpiredRow]:
    """Up to ``query.limit`` sessions due now, each once."""
    found: dict[str, ExpiredRow] = {}
    for stmt in _statements(dialect, query, query.limit):
        if len(found) >= query.limit:
            break
        for sid, namespace, agent_id in await fetch(stmt.sql, stmt.params):
            found.setdefault(sid, ExpiredRow(sid, namespace, agent_id))
    return list(found.values())[: query.limit]
