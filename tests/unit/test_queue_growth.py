"""When a burst of submits makes PostgreSQL's statistics of `jobs` stale enough to refresh."""

from __future__ import annotations

from agent.db.jobstore import QueueGrowth


def test_nothing_below_the_floor_then_once_per_doubling() -> None:
    growth = QueueGrowth(floor=1_000)
    seen = [depth for depth in range(1, 9_001) if growth.needs_analyze(depth)]
    assert seen == [1_000, 2_000, 4_000, 8_000]


def test_a_queue_that_drained_and_refilled_is_analysed_again() -> None:
    """Statistics taken while the queue was short (autovacuum's, say) count few queued jobs:
    growth is measured from the shallowest queue seen since the last ANALYZE."""
    growth = QueueGrowth(floor=1_000)
    assert growth.needs_analyze(5_000)
    assert not growth.needs_analyze(9_000)
    assert not growth.needs_analyze(10)  # drained
    assert not growth.needs_analyze(999)
    assert growth.needs_analyze(1_000)
    assert not growth.needs_analyze(1_999)
    assert growth.needs_analyze(2_000)


def test_a_steady_deep_queue_is_not_analysed_again_and_again() -> None:
    growth = QueueGrowth(floor=1_000)
    assert growth.needs_analyze(3_000)
    assert not any(growth.needs_analyze(depth) for depth in [2_500, 3_500, 4_000, 2_900] * 50)
