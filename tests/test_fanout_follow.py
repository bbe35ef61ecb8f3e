"""The hub's direct path on its own: who follows, what a follower is handed, and how it leaves.

The sinks here are real FrameSinks that keep what they are written in a list (a transport
that never congests, one that refuses, one whose write fails); the end-to-end behaviour with
real connections is in tests/test_stream_direct.py.
"""

from __future__ import annotations

import asyncio

from actors.core.events import EventLog
from actors.session.fanout import CLOSED, Hub


class ListSink:
    """A FrameSink writing into a list; ``refuse`` makes it refuse, ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.written: list[list[bytes]] = []
        self.refuse = False
        self.fail = False

    def offer(self, frames: list[bytes]) -> bool:
        if self.fail:
            raise OSError("the connection broke")
        if self.refuse:
            return False
        self.written.append(list(frames))
        return True


def _hub() -> Hub:
    return Hub(EventLog(frame=lambda seq, type_, data: b"%d:%s" % (seq, data), retention=1000))


def _emit(hub: Hub, *seqs: int) -> None:
    for seq in seqs:
        hub.log.append(seq, "message.delta", b"e%d" % seq)
    hub.notify()


async def _turn() -> None:
    """Let the loop run the hub's push (scheduled with call_soon) and what it wakes."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_follower_gets_each_iterations_events_in_one_write_and_in_order() -> None:
    hub = _hub()
    sub = hub.subscribe(0)
    sink = ListSink()
    following = asyncio.ensure_future(sub.follow(sink, 30))
    await _turn()
    assert hub.followers == 1
    _emit(hub, 1, 2, 3)  # three events in one iteration
    _emit(hub, 4)
    await _turn()
    assert sink.written == [[b"1:e1", b"2:e2", b"3:e3", b"4:e4"]]
    _emit(hub, 5)
    await _turn()
    assert sink.written[-1] == [b"5:e5"]
    assert sub.cursor == 5 and not following.done()
    hub.close()
    assert await following == 5
    assert await sub.next(1.0) is CLOSED


async def test_a_subscriber_behind_does_not_follow_until_it_has_read() -> None:
    hub = _hub()
    _emit(hub, 1, 2)
    sub = hub.subscribe(0)
    assert await sub.follow(ListSink(), 30) is None  # a replay first, by the cursor
    assert await sub.next(1.0) == [b"1:e1", b"2:e2"]
    sink = ListSink()
    following = asyncio.ensure_future(sub.follow(sink, 30))
    await _turn()
    assert hub.followers == 1
    following.cancel()
    await asyncio.gather(following, return_exceptions=True)
    assert hub.followers == 0


async def test_a_refusing_sink_falls_back_with_its_cursor_exact_and_others_go_on() -> None:
    hub = _hub()
    slow, fast = hub.subscribe(0), hub.subscribe(0)
    slow_sink, fast_sink = ListSink(), ListSink()
    slow_following = asyncio.ensure_future(slow.follow(slow_sink, 30))
    fast_following = asyncio.ensure_future(fast.follow(fast_sink, 30))
    await _turn()
    _emit(hub, 1)
    await _turn()
    slow_sink.refuse = True  # its connection congests
    _emit(hub, 2, 3)
    await _turn()
    assert await slow_following == 1  # it stopped following, having been handed event 1 only
    assert slow.cursor == 1
    assert await slow.next(1.0) == [b"2:e2", b"3:e3"]  # the rest by its cursor, no gap, no repeat
    assert fast_sink.written == [[b"1:e1"], [b"2:e2", b"3:e3"]]
    assert not fast_following.done() and hub.followers == 1
    slow_sink.refuse = False
    slow_again = asyncio.ensure_future(slow.follow(slow_sink, 30))  # caught up: it follows again
    await _turn()
    _emit(hub, 4)
    await _turn()
    assert slow_sink.written[-1] == [b"4:e4"] and fast_sink.written[-1] == [b"4:e4"]
    hub.close()
    await asyncio.gather(slow_again, fast_following)


async def test_a_failing_sink_leaves_without_keeping_the_others_from_their_frames() -> None:
    hub = _hub()
    broken, fine = hub.subscribe(0), hub.subscribe(0)
    broken_sink, fine_sink = ListSink(), ListSink()
    broken_sink.fail = True
    broken_following = asyncio.ensure_future(broken.follow(broken_sink, 30))
    fine_following = asyncio.ensure_future(fine.follow(fine_sink, 30))
    await _turn()
    _emit(hub, 1)
    await _turn()
    assert await broken_following == 0 and broken.cursor == 0
    assert fine_sink.written == [[b"1:e1"]]
    hub.close()
    await fine_following


async def test_a_task_stream_is_handed_up_to_its_end_and_no_further() -> None:
    hub = _hub()
    sub = hub.subscribe(0, task_id="t1")
    sink = ListSink()
    following = asyncio.ensure_future(sub.follow(sink, 30))
    await _turn()
    hub.log.append(1, "message.delta", b"e1")
    hub.log.append(2, "task.completed", b"e2")
    hub.task_end_seq["t1"] = 2
    hub.log.append(3, "task.started", b"e3")  # the next task, in the same iteration
    hub.notify()
    await _turn()
    assert await following == 2
    assert sink.written == [[b"1:e1", b"2:e2"]]
    assert await sub.next(1.0) is CLOSED


async def test_a_follower_wakes_for_its_heartbeat() -> None:
    hub = _hub()
    sub = hub.subscribe(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await asyncio.wait_for(sub.follow(ListSink(), 0.05), 5) == 0
    assert loop.time() - t0 >= 0.05 - 0.002
    assert hub.followers == 0
