"""`--wait`: follow a job to its end with a progress bar driven by the job's own progress (a
spinner with its latest log line until it reports any), then its outcome and exit status."""

from __future__ import annotations

import re
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
)
from rich.text import Text

from cli import fmt, render
from cli.client import Api, one_line
from cli.errors import CliError

POLL_SECONDS = 1.0
OUTAGE_SECONDS = 120.0
_LOG_PREFIX = re.compile(r"^\S+Z (?:agent |stdout|stderr) ")


def wait_for(
    api: Api, job: dict[str, Any], err: Console, poll: float = POLL_SECONDS
) -> dict[str, Any]:
    """Poll the job until it is final, showing progress on `err`; the final job."""
    job_id = str(job["id"])
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[eta]}"),
    )
    try:
        poller = _Poller(api, job_id, poll)
        if not err.is_terminal:  # a log or a pipe: no animation, just the outcome at the end
            while job.get("status") not in render.FINAL:
                job = poller.next(job)
            return job
        with Progress(*columns, console=err, transient=True) as bar:
            task = bar.add_task(_describe(job, ""), total=None, eta="")
            while job.get("status") not in render.FINAL:
                job = poller.next(job)
                _show(api, bar, task, job)
    except KeyboardInterrupt:
        raise CliError(
            f"stopped waiting; job {job_id} goes on (`trainyard cancel {job_id}` stops it)",
            exit_code=130,
        ) from None
    return job


class _Poller:
    """GET the job every `poll` seconds. A wait may last days: a service that is briefly
    unreachable or failing (a restart) is asked again, for up to `OUTAGE_SECONDS` in a row."""

    def __init__(self, api: Api, job_id: str, poll: float) -> None:
        self.api = api
        self.job_id = job_id
        self.poll = poll
        self.failing_since: float | None = None

    def next(self, job: dict[str, Any]) -> dict[str, Any]:
        time.sleep(self.poll)
        try:
            fresh = render.mapping(self.api.get(f"/jobs/{self.job_id}"))
        except CliError as exc:
            now = time.monotonic()
            self.failing_since = self.failing_since or now
            if not exc.transient or now - self.failing_since > OUTAGE_SECONDS:
                raise
            return job
        self.failing_since = None
        return fresh


def _show(api: Api, bar: Progress, task: TaskID, job: dict[str, Any]) -> None:
    """The bar at the job's progress, or (before it reports any) its latest log line."""
    fraction = fmt.real(job.get("progress"))
    if fraction is None:
        bar.update(task, description=_describe(job, _latest_line(api, str(job["id"]))))
        return
    eta = job.get("eta_seconds")
    bar.update(
        task,
        description=_describe(job, ""),
        total=1.0,
        completed=max(0.0, min(1.0, fraction)),
        eta=f"ETA {fmt.duration(eta)}" if eta is not None else "",
    )


def _describe(job: dict[str, Any], line: str) -> str:
    status = one_line(str(job.get("status")), 20)
    waiting = job.get("unschedulable_reason") if status == "queued" else None
    detail = one_line(str(waiting or line), 80)
    return f"{status}: {detail}" if detail else status


def _latest_line(api: Api, job_id: str) -> str:
    try:
        text = api.request("GET", f"/jobs/{job_id}/logs", params={"tail": 1}).text
    except CliError:
        return ""  # the log is decoration here; the job's state is what counts
    last = text.rstrip("\n").rsplit("\n", 1)[-1]
    return _LOG_PREFIX.sub("", last)


def outcome_line(job: dict[str, Any]) -> Text:
    """'job <id> succeeded in 12s' or 'job <id> failed (user_error, exit 3) in 4s: <reason>'."""
    status = str(job.get("status"))
    took = fmt.duration(render.run_time(job))
    line = Text(f"job {one_line(str(job.get('id')), 40)} ")
    line.append(one_line(status, 20), style=render.STATUS_STYLES.get(status, ""))
    if status != "succeeded":
        line.append(f" ({one_line(str(job.get('outcome')), 20)}, exit {job.get('exit_code')})")
    line.append(f" in {took}")
    if status != "succeeded" and job.get("reason"):
        line.append(f": {one_line(str(job.get('reason')), 500)}")
    return line


def exit_status(job: dict[str, Any]) -> int:
    """The command's exit code: 0 for success, else the job's own exit code (1 without one)."""
    if job.get("status") == "succeeded":
        return 0
    code = job.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 256:
        return code
    return 1
