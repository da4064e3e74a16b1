"""Classifying a finished container (agent/outcomes.py)."""

from __future__ import annotations

import itertools

import pytest

from agent.core.jobs import Outcome
from agent.core.outcomes import (
    _CUDA_OOM,
    _CUDA_OOM_WORDS,
    ExitReport,
    classify,
    has_cuda_oom,
    is_cuda_oom_line,
)

CONFIG_REASON = "the command could not run in the image; check the job's command and image"


@pytest.mark.parametrize(
    ("report", "outcome", "reason"),
    [
        (ExitReport(0), Outcome.SUCCEEDED, "exit code 0"),
        (ExitReport(1), Outcome.USER_ERROR, "exit code 1"),
        (ExitReport(2), Outcome.USER_ERROR, "exit code 2"),
        (ExitReport(125), Outcome.USER_ERROR, "exit code 125"),
        (ExitReport(126), Outcome.CONFIG_ERROR, f"exit code 126: {CONFIG_REASON}"),
        (ExitReport(127), Outcome.CONFIG_ERROR, f"exit code 127: {CONFIG_REASON}"),
        (ExitReport(128), Outcome.USER_ERROR, "exit code 128"),
        # Killed by SIGKILL but not by the OOM killer: the job's own failure.
        (ExitReport(137), Outcome.USER_ERROR, "exit code 137"),
        (ExitReport(255), Outcome.USER_ERROR, "exit code 255"),
        (ExitReport(-1), Outcome.USER_ERROR, "exit code -1"),
        (
            ExitReport(137, oom_killed=True),
            Outcome.OOM,
            "killed for exceeding its memory limit of 2g; "
            "ask for more memory (resources.memory) or use less",
        ),
        (
            ExitReport(143, timed_out=True),
            Outcome.TIMEOUT,
            "ran past its timeout and was stopped: the process exited on SIGTERM",
        ),
        (
            ExitReport(143, cancelled=True),
            Outcome.CANCELLED,
            "cancelled: the process exited on SIGTERM",
        ),
        (
            ExitReport(137, cancelled=True),
            Outcome.CANCELLED,
            "cancelled: the process did not exit on SIGTERM and was killed (SIGKILL) after the "
            "grace period",
        ),
        (
            ExitReport(0, timed_out=True),
            Outcome.TIMEOUT,
            "ran past its timeout and was stopped: the process exited with code 0 after SIGTERM",
        ),
        # An engine error alone does not change the classification.
        (ExitReport(1, engine_error="boom"), Outcome.USER_ERROR, "exit code 1"),
    ],
)
def test_each_branch(report: ExitReport, outcome: Outcome, reason: str) -> None:
    assert classify(report, memory_limit="2g") == (outcome, reason)


@pytest.mark.parametrize("limit", ["512m", "1536m", "4g", "6291456"])
def test_oom_reason_names_the_limit(limit: str) -> None:
    outcome, reason = classify(ExitReport(137, oom_killed=True), memory_limit=limit)
    assert outcome is Outcome.OOM
    assert reason == (
        f"killed for exceeding its memory limit of {limit}; "
        "ask for more memory (resources.memory) or use less"
    )


def expected_outcome(cancelled: bool, timed_out: bool, oom: bool, code: int) -> Outcome:
    if cancelled:
        return Outcome.CANCELLED
    if timed_out:
        return Outcome.TIMEOUT
    if oom:
        return Outcome.OOM
    if code == 0:
        return Outcome.SUCCEEDED
    if code in (126, 127):
        return Outcome.CONFIG_ERROR
    return Outcome.USER_ERROR


@pytest.mark.parametrize(
    ("cancelled", "timed_out", "oom", "code"),
    list(itertools.product([False, True], [False, True], [False, True], [0, 1, 126, 127, 137])),
)
def test_precedence_cancelled_then_timeout_then_oom_then_exit_code(
    cancelled: bool, timed_out: bool, oom: bool, code: int
) -> None:
    report = ExitReport(code, oom_killed=oom, cancelled=cancelled, timed_out=timed_out)
    outcome, _ = classify(report, memory_limit="1g")
    assert outcome is expected_outcome(cancelled, timed_out, oom, code)


def test_oom_beats_a_zero_exit_code() -> None:
    assert classify(ExitReport(0, oom_killed=True), memory_limit="1g")[0] is Outcome.OOM


def test_exit_report_defaults() -> None:
    assert ExitReport(3) == ExitReport(
        exit_code=3, oom_killed=False, engine_error="", cancelled=False, timed_out=False
    )


# --- evidence beyond the exit code (issue 3) ---------------------------------------------------


def test_exit_137_with_the_engines_oom_event_is_oom_without_the_flag() -> None:
    outcome, reason = classify(ExitReport(137, oom_event=True), memory_limit="96m")
    assert outcome is Outcome.OOM
    assert "memory limit of 96m" in reason


def test_an_oom_event_with_another_exit_code_is_not_oom() -> None:
    # A child process was OOM-killed but the job handled it and exited on its own terms.
    outcome, _ = classify(ExitReport(1, oom_event=True), memory_limit="96m")
    assert outcome is Outcome.USER_ERROR


def test_exit_137_without_evidence_stays_a_user_error() -> None:
    assert classify(ExitReport(137), memory_limit="1g")[0] is Outcome.USER_ERROR


@pytest.mark.parametrize("code", [137, 143])
def test_a_kill_from_outside_is_an_infra_error(code: int) -> None:
    outcome, reason = classify(ExitReport(code, killed_from_outside=True), memory_limit="1g")
    assert outcome is Outcome.INFRA_ERROR
    assert "stopped from outside the agent" in reason


def test_a_kill_from_outside_does_not_hide_a_real_exit() -> None:
    assert classify(ExitReport(3, killed_from_outside=True), memory_limit="1g")[0] is (
        Outcome.USER_ERROR
    )


def test_cuda_oom_needs_a_failing_exit() -> None:
    assert classify(ExitReport(1, cuda_oom=True), memory_limit="1g")[0] is Outcome.CUDA_OOM
    assert classify(ExitReport(0, cuda_oom=True), memory_limit="1g")[0] is Outcome.SUCCEEDED
    # The container's own memory limit wins over a GPU message.
    assert classify(ExitReport(137, oom_killed=True, cuda_oom=True), memory_limit="1g")[0] is (
        Outcome.OOM
    )


@pytest.mark.parametrize(
    "line",
    [
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 15.78 GiB"
        " total capacity; 14.2 GiB already allocated)",
        "torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "RuntimeError: CUDA error: out of memory",
        "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "cudaErrorMemoryAllocation: out of memory",
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to"
        " allocate 17179869184 bytes.",
        "ResourceExhaustedError: OOM when allocating tensor with shape[1024,1024]",
    ],
)
def test_cuda_oom_messages_are_recognised(line: str) -> None:
    assert is_cuda_oom_line(line)


@pytest.mark.parametrize(
    "line",
    ["epoch 3 loss 0.2", "MemoryError", "Killed", "checking CUDA memory usage: 3.1 GiB"],
)
def test_ordinary_lines_are_not_cuda_oom(line: str) -> None:
    assert not is_cuda_oom_line(line)


def test_every_gpu_oom_pattern_passes_the_cheap_prefilter() -> None:
    """has_cuda_oom skips the regex unless a prefilter word appears: no pattern may lack one."""
    for alternative in _CUDA_OOM.pattern.split("|"):
        lowered = alternative.lower().encode()
        assert any(word in lowered for word in _CUDA_OOM_WORDS), alternative


@pytest.mark.parametrize(
    "line",
    [
        b"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        b"RuntimeError: CUDA error: OUT OF MEMORY",
        b"CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate",
        b"ResourceExhaustedError: OOM when allocating tensor with shape[64,1024]",
    ],
)
def test_gpu_oom_found_in_a_block_of_output(line: bytes) -> None:
    block = b"\n".join([b"epoch 1 loss 0.4"] * 100 + [line] + [b"bye"])
    assert has_cuda_oom(block)
    assert not has_cuda_oom(b"\n".join([b"epoch 1 loss 0.4 memory fine"] * 100))
