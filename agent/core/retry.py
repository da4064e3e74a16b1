"""Which failed attempts are worth another try, and when — pure."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from agent.core.jobs import RETRYABLE_ON_REQUEST, Outcome
from agent.core.records import Job

# cuda_oom is not: the same batch size fails again. A job that opts in (retry_on) gets
# TRAINYARD_LAST_OUTCOME=cuda_oom on its next attempt, to react (e.g. halve its batch).
RETRYABLE_BY_DEFAULT = frozenset({Outcome.USER_ERROR})
# Retried on the platform's budget, not the job's: a stall (a hung NCCL collective, a deadlocked
# data loader) is most often a broken node or driver, and goes away on a fresh start.
ON_INFRA_BUDGET = frozenset({Outcome.INFRA_ERROR, Outcome.STALLED})


@dataclass(frozen=True)
class RetryDecision:
    delay_seconds: float
    uses_job_budget: bool
    reason: str


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    User-visible failures spend the job's own `max_retries`; platform failures (`infra_error`)
    spend a separate, larger budget, because the job did nothing wrong.
    """

    base_delay: float = 5.0
    factor: float = 2.0
    max_delay: float = 600.0
    jitter: float = 0.1
    infra_budget: int = 10
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, retry_number: int) -> float:
        """Delay before retry number `retry_number` (1-based)."""
        raw = min(self.max_delay, self.base_delay * self.factor ** max(0, retry_number - 1))
        spread = raw * self.jitter
        return max(0.0, raw + self.rng.uniform(-spread, spread))

    def decide_for(
        self, job: Job, outcome: Outcome, *, exit_code: int | None
    ) -> RetryDecision | None:
        """`decide` with the budgets and rules the job carries."""
        return self.decide(
            outcome,
            exit_code=exit_code,
            retries_used=job.retries_used,
            max_retries=job.max_retries,
            infra_retries_used=job.infra_retries_used,
            retry_on=(
                frozenset(Outcome(o) for o in job.retry_on) if job.retry_on is not None else None
            ),
            non_retryable_exit_codes=frozenset(job.non_retryable_exit_codes),
        )

    def decide(
        self,
        outcome: Outcome,
        *,
        exit_code: int | None,
        retries_used: int,
        max_retries: int,
        infra_retries_used: int,
        retry_on: frozenset[Outcome] | None = None,
        non_retryable_exit_codes: frozenset[int] = frozenset(),
    ) -> RetryDecision | None:
        """Return how to retry, or None when the outcome is final.

        `retry_on`, when a job gives it, replaces the default retryable classes;
        `non_retryable_exit_codes` makes those exit codes final whatever the class.
        """
        if outcome in ON_INFRA_BUDGET:
            if infra_retries_used >= self.infra_budget:
                return None
            n = infra_retries_used + 1
            what = "platform failure" if outcome is Outcome.INFRA_ERROR else outcome.value
            return RetryDecision(self.delay(n), False, f"{what}, retry {n} of {self.infra_budget}")
        retryable = RETRYABLE_BY_DEFAULT if retry_on is None else retry_on & RETRYABLE_ON_REQUEST
        if outcome not in retryable or retries_used >= max_retries:
            return None
        if exit_code is not None and exit_code in non_retryable_exit_codes:
            return None
        n = retries_used + 1
        what = f"exit code {exit_code}" if outcome is Outcome.USER_ERROR else outcome.value
        return RetryDecision(self.delay(n), True, f"{what}, retry {n} of {max_retries}")
