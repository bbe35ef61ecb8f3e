"""The memo behind per-message counts: same answers, each text computed once while it is kept,
and its memory bounded by characters (the oldest go first; very long texts are never kept)."""

from __future__ import annotations

from actors.agent.textmemo import TextMemo
from actors.agent.tokens import TokenCounter


def test_a_text_is_computed_once_while_it_is_kept_and_the_oldest_go_first() -> None:
    calls: list[str] = []

    def length(text: str) -> int:
        calls.append(text)
        return len(text)

    memo = TextMemo(length, max_text=10, max_chars=20)
    texts = [f"text {i:05}" for i in range(2)]  # 10 characters each: two fit
    assert [memo(t) for t in texts * 3] == [10, 10] * 3
    assert calls == texts, "each computed once"
    memo("text 00002")  # a third: the oldest goes
    assert len(memo) == 2
    assert memo(texts[1]) == 10 and memo(texts[0]) == 10
    assert calls == [*texts, "text 00002", texts[0]], "the dropped one is computed again, the kept one is not"
    long = "x" * 11
    assert memo(long) == memo(long) == 11
    assert calls.count(long) == 2, "a text over max_text is never kept"
    assert len(memo) == 2


def test_token_counts_are_the_same_remembered_or_not() -> None:
    counter = TokenCounter()
    text = "The session keeps every event in order, so a client that drops can resume exactly."
    first = counter.count(text)
    assert first == counter.count(text) == counter.count("".join(text))  # an equal text, another object
    assert 10 < first < 30
    long = "word " * 2000  # longer than what is kept
    assert counter.count(long) == counter.count(long) > 1000
