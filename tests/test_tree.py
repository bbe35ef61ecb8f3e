"""MessageTree and EventLog: the pure data structures."""

from __future__ import annotations

import pytest

from actors.core.events import KEEP_NEWEST, EventLog, MessageDelta, decode_event, delta_data, delta_head, encode_event
from actors.core.tree import MessageTree, Node, Role


def _node(id_: str, parent: str | None, role: Role = "user") -> Node:
    return Node(id_, parent, role, id_, "2026-01-01T00:00:00Z")


def test_siblings_active_path_and_newest_leaf() -> None:
    tree = MessageTree()
    tree.add(_node("u1", None))
    tree.add(_node("a1", "u1", "assistant"))
    tree.add(_node("a1b", "u1", "assistant"))  # a regeneration: sibling of a1
    tree.add(_node("u2", "a1b"))
    assert [n.id for n in tree.active_path()] == ["u1", "a1b", "u2"]
    assert tree.sibling_position("a1b") == (1, 2)
    assert tree.sibling_position("a1") == (0, 2)
    assert tree.newest_leaf_under("u1") == "u2"
    tree.active_leaf_id = tree.newest_leaf_under("a1")
    assert [n.id for n in tree.active_path()] == ["u1", "a1"]


def test_rebuild_from_nodes_keeps_order_and_leaf() -> None:
    tree = MessageTree()
    for node in (_node("u1", None), _node("a1", "u1", "assistant"), _node("a2", "u1", "assistant")):
        tree.add(node)
    again = MessageTree.from_nodes([_node(n.id, n.parent_id, n.role) for n in tree.in_order()], "a1")
    assert again.nodes["u1"].children == ["a1", "a2"]
    assert [n.id for n in again.active_path()] == ["u1", "a1"]


def test_add_rejects_unknown_parent() -> None:
    with pytest.raises(KeyError):
        MessageTree().add(_node("x", "missing"))


def _frame(seq: int, type_: str, data: bytes) -> bytes:
    return b"%d %s %s" % (seq, type_.encode(), data)


def test_event_log_replay_and_floor() -> None:
    log = EventLog(frame=_frame, retention=100)
    for seq in range(1, 501):
        log.append(seq, "message.delta", b"%d" % seq)
    assert log.floor > 0
    assert not log.covers(log.floor - 1)
    seqs, frames = log.since(480)
    assert seqs == list(range(481, 501))
    assert frames[0] == b"481 message.delta 481"  # framed once, by the encoder it was given
    assert len(log) <= 100 + 100 // 8 + 64
    with pytest.raises(ValueError):
        log.append(500, "x", b"")


def test_event_log_keeps_at_most_its_bytes_past_only_its_newest_events() -> None:
    log = EventLog(frame=_frame, retention=10_000, retention_bytes=10_000)
    for seq in range(1, 401):
        log.append(seq, "message.delta", b"x" * 40)  # frames of 58 or 59 bytes
        assert log.size <= 10_000 and log.size == sum(map(len, log.since(0)[1]))
    seqs, _ = log.since(0)
    assert seqs == list(range(seqs[0], 401)) and log.floor == seqs[0] - 1
    assert 10_000 - 10_000 // 8 - 59 <= log.size, "trimmed to an eighth below the bound, not further"
    assert not log.covers(log.floor - 1) and log.covers(log.floor)
    # A batch of large events (an answer's end, say) stays whole however large: appended before
    # any subscriber is handed one, it must not push its own first events out.
    big = [b"y" * 5_000, b"{}", b"{}"]
    for seq, data in enumerate(big, start=401):
        log.append(seq, "message.completed", data)
    assert log.since(400)[0] == [401, 402, 403] and log.covers(400)
    for seq in range(404, 404 + KEEP_NEWEST):
        log.append(seq, "message.completed", b"z" * 5_000)
    kept = log.since(0)[0]
    assert kept == list(range(404, 404 + KEEP_NEWEST)), "the newest, past the bound"
    assert log.size == sum(map(len, log.since(0)[1])) and log.floor == kept[0] - 1
    log.forget_through(kept[-1])
    assert len(log) == 0 and log.size == 0 and log.floor == kept[-1]


def test_event_log_sheds_its_oldest_events_to_a_size_never_its_newest() -> None:
    log = EventLog(frame=_frame, retention=10_000)
    for seq in range(1, 201):
        log.append(seq, "message.delta", b"x" * 40)
    size = log.size
    assert log.shed(size) == 0 and log.floor == 0, "already within it"
    dropped = log.shed(size // 2)
    seqs, frames = log.since(0)
    assert dropped == size - log.size and log.size == sum(map(len, frames)) <= size // 2
    assert seqs == list(range(seqs[0], 201)) and log.floor == seqs[0] - 1 and not log.covers(log.floor - 1)
    assert log.shed(0) > 0 and log.since(0)[0] == list(range(201 - KEEP_NEWEST, 201)), "the newest stay"
    assert log.shed(0) == 0 and log.last_seq == 200


@pytest.mark.parametrize("text", ["", "token", ' "quoted" \\ \n\ndata: x', "naïve ☕ \u2028 🎉", "\x00\x1f"])
def test_a_delta_from_its_reply_head_is_the_event_encoded_whole(text: str) -> None:
    head = delta_head("tsk_1", "msg_2")
    assert delta_data(head, text) == encode_event(MessageDelta("tsk_1", "msg_2", text))
    assert decode_event(delta_data(head, text)) == MessageDelta("tsk_1", "msg_2", text)
