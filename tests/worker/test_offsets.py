from worker.offsets import OffsetTracker


def test_watermark_waits_for_the_lowest_open_offset() -> None:
    t = OffsetTracker()
    for o in range(5):
        t.started("p0", o)
    t.finished("p0", 1)
    t.finished("p0", 2)
    assert t.committable() == {"p0": 0}  # offset 0 still open: nothing past it may be committed
    t.finished("p0", 0)
    assert t.committable() == {"p0": 3}
    t.mark_committed({"p0": 3})
    assert t.committable() == {}
    t.finished("p0", 4)
    t.finished("p0", 3)
    assert t.committable() == {"p0": 5} and t.in_flight() == 0


def test_partitions_are_independent_and_forgettable() -> None:
    t = OffsetTracker()
    t.started("a", 10)
    t.started("b", 7)
    t.finished("b", 7)
    assert t.committable() == {"a": 10, "b": 8}
    t.forget(["a"])
    assert t.committable() == {"b": 8} and t.in_flight() == 0
