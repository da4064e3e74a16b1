"""Turn what the engine reports about a finished container into an attempt outcome — pure."""

from __future__ import annotations

from dataclasses import dataclass

from agent.jobs import Outcome

# Exit codes a shell or runtime uses when the command itself could not run.
COMMAND_NOT_EXECUTABLE = 126
COMMAND_NOT_FOUND = 127
SIGKILL_EXIT = 137


@dataclass(frozen=True)
class ExitReport:
    exit_code: int
    oom_killed: bool = False
    engine_error: str = ""
    cancelled: bool = False
    timed_out: bool = False


def classify(report: ExitReport, *, memory_limit: str) -> tuple[Outcome, str]:
    """The attempt's outcome and a sentence for people."""
    code = report.exit_code
    if report.cancelled:
        return Outcome.CANCELLED, "cancelled"
    if report.timed_out:
        return Outcome.TIMEOUT, "ran past its timeout and was stopped"
    if report.oom_killed:
        return Outcome.OOM, f"killed for exceeding its memory limit of {memory_limit}"
    if code == 0:
        return Outcome.SUCCEEDED, "exit code 0"
    if code in (COMMAND_NOT_EXECUTABLE, COMMAND_NOT_FOUND):
        return Outcome.CONFIG_ERROR, (
            f"exit code {code}: the command could not run in the image; "
            "check the job's command and image"
        )
    return Outcome.USER_ERROR, f"exit code {code}"
