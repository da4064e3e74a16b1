"""When to create the next job's container ahead of its claim: a pure back-off on misses.

A container prepared for the queue's head is used only if this agent's next claim takes that
job; where several agents share the queue, another agent often takes it first and the create
(and its removal) was engine work for nothing. After a miss the agent lets 1, 3, 7, … (at most
`MAX_SKIPS`) chances to prepare go by before trying again; a hit resets that."""

from __future__ import annotations

from dataclasses import dataclass

MAX_SKIPS = 63


@dataclass
class PrepareOdds:
    misses_in_a_row: int = 0
    skips_left: int = 0

    def should_prepare(self) -> bool:
        """Whether to prepare at this chance (a chance not taken counts towards the back-off)."""
        if self.skips_left > 0:
            self.skips_left -= 1
            return False
        return True

    def record(self, *, used: bool) -> None:
        if used:
            self.misses_in_a_row = self.skips_left = 0
            return
        self.misses_in_a_row += 1
        self.skips_left = min(MAX_SKIPS, 2**self.misses_in_a_row - 1)
