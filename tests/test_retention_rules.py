"""Retention rules as pure functions: precedence, when a rule is due, what keep_latest keeps."""

from __future__ import annotations

import time

import msgspec
import pytest

from actors.core.ids import utcnow
from actors.core.retention import ExpiryQuery, Retention, RetentionRules, effective, is_due, kept_ids
from actors.core.tree import MessageTree, Node


def test_precedence_temporary_then_own_then_agent_then_namespace() -> None:
    ns, agent, own = Retention(ttl_seconds=10), Retention(ttl_seconds=20), Retention(ttl_seconds=30)
    rules = RetentionRules(namespaces={"n": ns}, agents={"a": agent}, temporary_ttl_seconds=5)
    assert rules.configured("n", "a") is agent
    assert rules.configured("n", "other") is ns and rules.configured("n", None) is ns
    assert rules.configured("elsewhere", None) is None
    assert effective(temporary=False, own=own, configured=agent, temporary_ttl=5) is own
    assert effective(temporary=False, own=None, configured=agent, temporary_ttl=5) is agent
    assert effective(temporary=True, own=None, configured=agent, temporary_ttl=5) == Retention(ttl_seconds=5)
    assert effective(temporary=False, own=None, configured=None, temporary_ttl=5) is None


def test_a_rule_is_due_after_its_ttl_and_keep_latest_only_past_its_count() -> None:
    now = time.time()
    at = utcnow()
    delete = Retention(ttl_seconds=60)
    assert not is_due(delete, at, 10, now) and is_due(delete, at, 10, now + 61)
    keep = Retention(ttl_seconds=60, action="keep_latest", keep_latest=4)
    assert is_due(keep, at, 5, now + 61) and not is_due(keep, at, 4, now + 61)


@pytest.mark.parametrize(
    "body",
    [
        {"ttl_seconds": 0},
        {"ttl_seconds": -1},
        {"ttl_seconds": 1e12},
        {"ttl_seconds": 1, "action": "keep_latest"},
        {"ttl_seconds": 1, "action": "keep_latest", "keep_latest": 0},
        {"ttl_seconds": 1, "keep_latest": 2},
        {"ttl_seconds": 1, "action": "archive"},
        {"ttl_seconds": 1, "unknown": True},
    ],
)
def test_bad_rules_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(body, Retention)


def test_keep_latest_keeps_the_newest_of_the_active_path() -> None:
    tree = MessageTree()
    ids = [f"m{i}" for i in range(6)]
    for i, node_id in enumerate(ids):
        tree.add(Node(node_id, ids[i - 1] if i else None, "user" if i % 2 == 0 else "assistant", node_id, utcnow()))
    tree.add(Node("side", "m1", "user", "an edit", utcnow()), activate=False)
    tree.active_leaf_id = "m5"
    assert kept_ids(tree, 3) == ["m3", "m4", "m5"]
    assert kept_ids(tree, 10) == ids  # the side branch is not on the active path
    assert kept_ids(tree, 0) == []


def test_the_query_compares_times_as_the_store_writes_them() -> None:
    now = time.time()
    before = ExpiryQuery(now=now, rules=RetentionRules(), limit=1).before(60)
    assert len(before) == len(utcnow()) and before < utcnow()
    assert ExpiryQuery(now=now + 120, rules=RetentionRules(), limit=1).before(60) > utcnow()
