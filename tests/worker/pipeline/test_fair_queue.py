"""Fetch slots: a slow partition cannot take every slot, and the byte budget holds fetching back."""

from __future__ import annotations

from worker.pipeline.fair_queue import FairQueue


def test_a_busy_partition_leaves_a_slot_for_an_idle_one_and_newcomers_go_first() -> None:
    q: FairQueue[str] = FairQueue(slots=4, max_bytes=1 << 30)
    q.set_lanes({"slow", "fast"})
    for i in range(10):
        q.put("slow", f"s{i}")
    taken = [q.get(0) for _ in range(4)]
    assert [t[0] for t in taken if t] == ["slow"] * 3 and taken[3] is None  # one slot kept for the idle lane
    q.put("fast", "f0")
    q.put("fast", "f1")
    assert q.get(0) == ("fast", "f0")  # at once, although the slow lane still has work queued
    q.done("slow")
    assert q.get(0) == ("fast", "f1")  # a freed slot goes to the lane with fewer fetches running
    q.done("fast")
    assert q.get(0) == ("slow", "s3")


def test_the_byte_budget_holds_fetching_back_until_bodies_are_released() -> None:
    q: FairQueue[str] = FairQueue(slots=4, max_bytes=1000)
    q.put("p", "a")
    q.put("p", "b")
    assert q.get(0) == ("p", "a")
    seen: list[int] = []
    release = q.hold(600, seen.append)
    q.hold(400, seen.append)
    assert q.get(0.01) is None and q.held_bytes == 1000
    release()
    assert q.get(0) == ("p", "b")
    release()  # a second release changes nothing
    assert q.held_bytes == 400 and seen == [600, 1000, 400]

