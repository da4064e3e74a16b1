"""Turn what the engine reports about a finished container into an attempt outcome — pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.core.jobs import Outcome

# Exit codes a shell or runtime uses when the command itself could not run.
COMMAND_NOT_EXECUTABLE = 126
COMMAND_NOT_FOUND = 127
SIGKILL_EXIT = 137
SIGTERM_EXIT = 143

# What PyTorch, CUDA, cuBLAS/cuDNN, TensorFlow and JAX print when the GPU runs out of memory.
_CUDA_OOM = re.compile(
    r"CUDA out of memory"
    r"|OutOfMemoryError: CUDA"
    r"|CUDA error: out of memory"
    r"|cudaErrorMemoryAllocation"
    r"|CUBLAS_STATUS_ALLOC_FAILED"
    r"|CUDNN_STATUS_ALLOC_FAILED"
    r"|RESOURCE_EXHAUSTED: Out of memory"
    r"|OOM when allocating tensor"
    r"|out of memory on device",
    re.IGNORECASE,
)


_CUDA_OOM_BYTES = re.compile(_CUDA_OOM.pattern.encode(), re.IGNORECASE)
# Every pattern above contains one of these (case aside): a cheap test that rules out nearly
# all output before the case-insensitive alternation runs (which costs ~3 µs a line).
_CUDA_OOM_WORDS = (b"memory", b"alloc")


def is_cuda_oom_line(text: str) -> bool:
    return _CUDA_OOM.search(text) is not None


def has_cuda_oom(output: bytes) -> bool:
    """Whether a block of output (many lines at once: one regex pass) shows a GPU OOM."""
    lowered = output.lower()
    if not any(word in lowered for word in _CUDA_OOM_WORDS):
        return False
    return _CUDA_OOM_BYTES.search(output) is not None


@dataclass(frozen=True)
class ExitReport:
    exit_code: int
    oom_killed: bool = False  # Docker's OOMKilled flag
    oom_event: bool = False  # the engine reported a cgroup OOM for this container
    killed_from_outside: bool = False  # a kill the agent did not send (engine shutdown, operator)
    cuda_oom: bool = False  # the output showed a GPU out-of-memory error
    engine_error: str = ""
    cancelled: bool = False
    timed_out: bool = False
    stalled: str = ""  # why the agent stopped it as stalled (no output for N s)
    disk_exceeded: str = ""  # how far past its disk budget the agent found it


def how_it_stopped(code: int) -> str:
    """Whether a stopped process ended on SIGTERM or had to be killed after the grace period
    (with an init process as PID 1, an unhandled SIGTERM ends the process at once)."""
    if code == SIGTERM_EXIT:
        return "the process exited on SIGTERM"
    if code == SIGKILL_EXIT:
        return "the process did not exit on SIGTERM and was killed (SIGKILL) after the grace period"
    return f"the process exited with code {code} after SIGTERM"


def classify(report: ExitReport, *, memory_limit: str) -> tuple[Outcome, str]:
    """The attempt's outcome and a sentence for people."""
    code = report.exit_code
    if report.cancelled:
        return Outcome.CANCELLED, f"cancelled: {how_it_stopped(code)}"
    if report.timed_out:
        return Outcome.TIMEOUT, f"ran past its timeout and was stopped: {how_it_stopped(code)}"
    if report.stalled:
        return (
            Outcome.STALLED,
            f"stalled ({report.stalled}) and was stopped: {how_it_stopped(code)}",
        )
    if report.disk_exceeded:
        return Outcome.DISK_EXCEEDED, (
            f"stopped for exceeding its disk budget ({report.disk_exceeded}); ask for more "
            f"(resources.disk) or write less: {how_it_stopped(code)}"
        )
    # OOMKilled is not always set (cgroup v2, a child process killed): exit 137 with the
    # engine's own OOM event is the same thing.
    if report.oom_killed or (code == SIGKILL_EXIT and report.oom_event):
        return Outcome.OOM, (
            f"killed for exceeding its memory limit of {memory_limit}; "
            "ask for more memory (resources.memory) or use less"
        )
    if code == 0:
        return Outcome.SUCCEEDED, "exit code 0"
    if report.cuda_oom:
        return Outcome.CUDA_OOM, f"exit code {code} after a CUDA out-of-memory error"
    if report.killed_from_outside and code in (SIGKILL_EXIT, SIGTERM_EXIT):
        return Outcome.INFRA_ERROR, (
            f"exit code {code}: the container was stopped from outside the agent "
            "(engine shutdown or an operator)"
        )
    if code in (COMMAND_NOT_EXECUTABLE, COMMAND_NOT_FOUND):
        return Outcome.CONFIG_ERROR, (
            f"exit code {code}: the command could not run in the image; "
            "check the job's command and image"
        )
    return Outcome.USER_ERROR, f"exit code {code}"
