"""When to create the next job's container ahead of its claim: a pure rule on how often the
containers prepared so far were used.

A container prepared for the queue's head is used only if this agent's next claim takes that
job. Where several agents share the queue, they all prepare the same head and most of them
lose it: the create (and its removal) was engine work for nothing. So the agent keeps a moving
average of hits; while it is below `MIN_HIT_RATE` it prepares only at every `PROBE_EVERY`-th
chance (enough to notice when it runs alone again), and a run of misses in a row (an engine
that refuses) backs off further: 1, 3, 7, … chances, at most `MAX_SKIPS`."""

from __future__ import annotations

from dataclasses import dataclass

MIN_HIT_RATE = 0.6
PROBE_EVERY = 8
WEIGHT = 0.25  # of the newest outcome in the moving average
MAX_SKIPS = 63


@dataclass
class PrepareOdds:
    hit_rate: float = 1.0  # optimistic: an agent alone on its queue uses what it prepares
    misses_in_a_row: int = 0
    skips_left: int = 0

    def should_prepare(self) -> bool:
        """Whether to prepare at this chance (a chance not taken counts towards the wait)."""
        if self.skips_left > 0:
            self.skips_left -= 1
            return False
        if self.hit_rate < MIN_HIT_RATE:
            self.skips_left = PROBE_EVERY - 1  # this chance is a probe; the next ones wait
        return True

    def record(self, *, used: bool) -> None:
        self.hit_rate += WEIGHT * ((1.0 if used else 0.0) - self.hit_rate)
        if used:
            self.misses_in_a_row = 0
            if self.hit_rate >= MIN_HIT_RATE:
                self.skips_left = 0
            return
        self.misses_in_a_row += 1
        self.skips_left = max(self.skips_left, min(MAX_SKIPS, 2**self.misses_in_a_row - 1))
