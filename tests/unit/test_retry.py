"""Retry decisions and backoff (agent/retry.py)."""

from __future__ import annotations

import random

import pytest

from agent.core.jobs import Outcome
from agent.core.retry import RETRYABLE_BY_DEFAULT, RetryDecision, RetryPolicy


def exact(**kwargs: float) -> RetryPolicy:
    """A policy without jitter, so delays are exact."""
    return RetryPolicy(jitter=0.0, rng=random.Random(0), **kwargs)  # type: ignore[arg-type]


def decide(
    policy: RetryPolicy,
    outcome: Outcome,
    *,
    exit_code: int | None = 1,
    retries_used: int = 0,
    max_retries: int = 3,
    infra_retries_used: int = 0,
) -> RetryDecision | None:
    return policy.decide(
        outcome,
        exit_code=exit_code,
        retries_used=retries_used,
        max_retries=max_retries,
        infra_retries_used=infra_retries_used,
    )


def test_retryable_set() -> None:
    # cuda_oom is not retried by default: the same batch size fails again.
    assert frozenset({Outcome.USER_ERROR}) == RETRYABLE_BY_DEFAULT


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.base_delay, policy.factor, policy.max_delay) == (5.0, 2.0, 600.0)
    assert (policy.jitter, policy.infra_budget) == (0.1, 10)


@pytest.mark.parametrize("max_retries", [0, 1, 3, 7])
def test_user_error_retries_until_budget_then_stops(max_retries: int) -> None:
    policy = exact()
    for used in range(max_retries):
        decision = decide(
            policy, Outcome.USER_ERROR, exit_code=2, retries_used=used, max_retries=max_retries
        )
        assert decision == RetryDecision(
            delay_seconds=5.0 * 2**used,
            uses_job_budget=True,
            reason=f"exit code 2, retry {used + 1} of {max_retries}",
        )
    for used in (max_retries, max_retries + 1, max_retries + 10):
        assert (
            decide(policy, Outcome.USER_ERROR, retries_used=used, max_retries=max_retries) is None
        )


def test_cuda_oom_is_final_by_default() -> None:
    assert decide(exact(), Outcome.CUDA_OOM, exit_code=1, max_retries=3) is None


def test_cuda_oom_retries_until_budget_then_stops_when_the_job_opts_in() -> None:
    policy = exact()
    decisions = [
        policy.decide(
            Outcome.CUDA_OOM,
            exit_code=1,
            retries_used=used,
            max_retries=2,
            infra_retries_used=0,
            retry_on=frozenset({Outcome.CUDA_OOM}),
        )
        for used in range(4)
    ]
    assert decisions == [
        RetryDecision(5.0, True, "cuda_oom, retry 1 of 2"),
        RetryDecision(10.0, True, "cuda_oom, retry 2 of 2"),
        None,
        None,
    ]


def test_user_error_reason_with_unknown_exit_code() -> None:
    decision = decide(exact(), Outcome.USER_ERROR, exit_code=None, max_retries=1)
    assert decision is not None
    assert decision.reason == "exit code None, retry 1 of 1"


@pytest.mark.parametrize(
    "outcome",
    [Outcome.OOM, Outcome.TIMEOUT, Outcome.CONFIG_ERROR, Outcome.CANCELLED, Outcome.SUCCEEDED],
    ids=lambda o: o.value,
)
@pytest.mark.parametrize("max_retries", [0, 1, 100])
def test_never_retried(outcome: Outcome, max_retries: int) -> None:
    policy = exact()
    for used in range(3):
        assert (
            decide(
                policy,
                outcome,
                exit_code=137,
                retries_used=used,
                max_retries=max_retries,
                infra_retries_used=0,
            )
            is None
        )


def test_infra_error_uses_its_own_budget() -> None:
    policy = exact(infra_budget=3)
    decisions = [
        decide(policy, Outcome.INFRA_ERROR, exit_code=None, infra_retries_used=n) for n in range(5)
    ]
    assert decisions == [
        RetryDecision(5.0, False, "platform failure, retry 1 of 3"),
        RetryDecision(10.0, False, "platform failure, retry 2 of 3"),
        RetryDecision(20.0, False, "platform failure, retry 3 of 3"),
        None,
        None,
    ]


@pytest.mark.parametrize("retries_used", [0, 3, 5, 1000])
@pytest.mark.parametrize("max_retries", [0, 3])
def test_infra_error_ignores_the_job_budget(retries_used: int, max_retries: int) -> None:
    decision = decide(
        exact(),
        Outcome.INFRA_ERROR,
        retries_used=retries_used,
        max_retries=max_retries,
        infra_retries_used=1,
    )
    assert decision == RetryDecision(10.0, False, "platform failure, retry 2 of 10")


def test_infra_budget_zero_never_retries() -> None:
    assert decide(exact(infra_budget=0), Outcome.INFRA_ERROR, infra_retries_used=0) is None


def test_job_budget_ignores_infra_retries() -> None:
    decision = decide(exact(), Outcome.USER_ERROR, retries_used=0, infra_retries_used=99)
    assert decision == RetryDecision(5.0, True, "exit code 1, retry 1 of 3")


def test_exact_delays_double_then_cap() -> None:
    policy = exact(base_delay=5.0, factor=2.0, max_delay=600.0)
    delays = [policy.delay(n) for n in range(1, 12)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0, 600.0, 600.0]


@pytest.mark.parametrize(
    ("base", "factor", "cap", "expected"),
    [
        (1.0, 3.0, 50.0, [1.0, 3.0, 9.0, 27.0, 50.0, 50.0]),
        (2.0, 1.0, 100.0, [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]),
        (10.0, 2.0, 15.0, [10.0, 15.0, 15.0, 15.0, 15.0, 15.0]),
        (0.0, 2.0, 600.0, [0.0] * 6),
        (5.0, 2.0, 0.0, [0.0] * 6),
    ],
)
def test_delay_schedule(base: float, factor: float, cap: float, expected: list[float]) -> None:
    policy = exact(base_delay=base, factor=factor, max_delay=cap)
    assert [policy.delay(n) for n in range(1, 7)] == expected


def test_retry_number_below_one_is_treated_as_first() -> None:
    policy = exact()
    assert policy.delay(0) == 5.0
    assert policy.delay(-3) == 5.0


def test_huge_retry_number_is_capped_not_overflowing() -> None:
    assert exact().delay(1000) == 600.0


@pytest.mark.parametrize("jitter", [0.1, 0.25, 0.5])
def test_jitter_stays_within_fraction(jitter: float) -> None:
    policy = RetryPolicy(jitter=jitter, rng=random.Random(0))
    seen: list[float] = []
    for _ in range(50):
        for n in range(1, 12):
            raw = min(600.0, 5.0 * 2 ** (n - 1))
            delay = policy.delay(n)
            assert raw * (1 - jitter) - 1e-9 <= delay <= raw * (1 + jitter) + 1e-9
            seen.append(delay / raw)
    # Jitter actually spreads the delays over both sides of the raw value.
    assert min(seen) < 1 - jitter / 2
    assert max(seen) > 1 + jitter / 2


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    a = RetryPolicy(rng=random.Random(0))
    b = RetryPolicy(rng=random.Random(0))
    assert [a.delay(n) for n in range(1, 10)] == [b.delay(n) for n in range(1, 10)]
    c = RetryPolicy(rng=random.Random(1))
    assert [a.delay(1) for _ in range(5)] != [c.delay(1) for _ in range(5)]


def test_decision_delay_is_jittered_but_bounded() -> None:
    policy = RetryPolicy(rng=random.Random(0))
    for used in range(8):
        decision = decide(policy, Outcome.USER_ERROR, retries_used=used, max_retries=8)
        assert decision is not None
        raw = min(600.0, 5.0 * 2**used)
        assert raw * 0.9 - 1e-9 <= decision.delay_seconds <= raw * 1.1 + 1e-9


def test_delay_never_negative_even_with_jitter_above_one() -> None:
    policy = RetryPolicy(jitter=3.0, rng=random.Random(0))
    delays = [policy.delay(1) for _ in range(200)]
    assert min(delays) == 0.0
    assert max(delays) <= 20.0


# --- a job's own retry rules (issue 3) ---------------------------------------------------------


def _decide(outcome: Outcome, **kwargs: object) -> RetryDecision | None:
    policy = RetryPolicy(jitter=0)
    values: dict[str, object] = {
        "exit_code": 1,
        "retries_used": 0,
        "max_retries": 3,
        "infra_retries_used": 0,
    }
    values.update(kwargs)
    return policy.decide(outcome, **values)  # type: ignore[arg-type]


def test_retry_on_replaces_the_default_classes() -> None:
    rules = frozenset({Outcome.OOM})
    assert _decide(Outcome.OOM, retry_on=rules, exit_code=137) is not None
    assert _decide(Outcome.USER_ERROR, retry_on=rules) is None
    assert _decide(Outcome.USER_ERROR, retry_on=frozenset()) is None


def test_retry_on_cannot_make_cancelled_retryable_nor_stop_infra_retries() -> None:
    assert _decide(Outcome.CANCELLED, retry_on=frozenset({Outcome.CANCELLED})) is None
    decision = _decide(Outcome.INFRA_ERROR, retry_on=frozenset())
    assert decision is not None and not decision.uses_job_budget


def test_non_retryable_exit_codes_are_final() -> None:
    codes = frozenset({2})
    assert _decide(Outcome.USER_ERROR, exit_code=2, non_retryable_exit_codes=codes) is None
    assert _decide(Outcome.USER_ERROR, exit_code=3, non_retryable_exit_codes=codes) is not None


def test_retry_on_still_respects_max_retries() -> None:
    rules = frozenset({Outcome.TIMEOUT})
    assert _decide(Outcome.TIMEOUT, retry_on=rules, retries_used=3) is None
    decision = _decide(Outcome.TIMEOUT, retry_on=rules, retries_used=2)
    assert decision is not None and decision.uses_job_budget
    assert decision.delay_seconds == 20.0
