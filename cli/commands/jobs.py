"""Commands on jobs: ls, show, logs, cancel, rerun, delete."""

from __future__ import annotations

import json
import re
import sys
from typing import Annotated, Any

import typer

from cli import render
from cli.client import one_line
from cli.commands.submit import show_submitted
from cli.context import JsonFlag, api
from cli.errors import CliError

_JOB_ID = re.compile(r"[0-9a-f]{32}")

JobIdArg = Annotated[str, typer.Argument(help="The job's id (32 hex digits, as `ls` shows).")]


def job_id(value: str) -> str:
    """A job id checked before it goes into a URL path (so `../stats` cannot reach elsewhere)."""
    normalized = value.strip().lower()
    if not _JOB_ID.fullmatch(normalized):
        raise CliError(
            f"{one_line(value, 40)!r} is not a job id: ids are 32 hex digits "
            "(`trainyard ls` shows them)"
        )
    return normalized


def ls(
    ctx: typer.Context,
    status: Annotated[
        str | None,
        typer.Option(
            "--status", "-s", help="queued, starting, running, succeeded, failed or cancelled."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", help="Only names starting with this.")
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            help="Only jobs with this label; repeat it: all must match.",
            metavar="KEY=VALUE",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many (1 to 500).")] = 20,
    offset: Annotated[int, typer.Option("--offset", help="Skip this many newest first.")] = 0,
    json_out: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    params: list[tuple[str, str | int]] = [("limit", limit), ("offset", offset)]
    if status:
        params.append(("status", status))
    if name:
        params.append(("name_prefix", name))
    for item in label or []:
        if "=" not in item:
            raise CliError(f"--label {one_line(item, 80)!r} must look like KEY=VALUE")
        params.append(("label", item))
    page = api(ctx).get("/jobs", params=params)
    if json_out:
        render.print_json(page)
        return
    items = [j for j in render.mapping(page).get("items") or [] if isinstance(j, dict)]
    total = render.mapping(page).get("total")
    if not items:
        render.console().print(f"no jobs (of {total} that match)" if offset else "no jobs match")
        return
    caption = f"{offset + 1}-{offset + len(items)} of {total} jobs, newest first"
    render.console().print(render.jobs_table(items, caption=caption))


def show(ctx: typer.Context, job: JobIdArg, json_out: JsonFlag = False) -> None:
    """One job: status, reason, progress, latest metrics and every attempt."""
    data = api(ctx).get(f"/jobs/{job_id(job)}")
    if json_out:
        render.print_json(data)
        return
    render.console().print(render.job_detail(render.mapping(data)))


def logs(
    ctx: typer.Context,
    job: JobIdArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep streaming to the end.")] = (
        False
    ),
    tail: Annotated[int, typer.Option("--tail", help="How many last lines (1 to 100000).")] = 100,
    json_out: Annotated[
        bool, typer.Option("--json", help="Each line as a JSON string, one per line.")
    ] = False,
) -> None:
    """The job's log: agent lines and the container's stdout/stderr."""
    path = f"/jobs/{job_id(job)}/logs"
    client = api(ctx)
    if not follow:
        text = client.request("GET", path, params={"tail": tail}).text
        for line in text.splitlines():
            _write_line(line, json_out)
        return
    try:
        with client.stream("GET", path, params={"tail": tail, "follow": "true"}) as response:
            for line in response.iter_lines():
                _write_line(line, json_out)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _write_line(line: str, json_out: bool) -> None:
    sys.stdout.write((json.dumps(line) if json_out else line) + "\n")
    sys.stdout.flush()


def cancel(ctx: typer.Context, job: JobIdArg, json_out: JsonFlag = False) -> None:
    """Cancel a job: a queued one at once, a running one's container is stopped."""
    data = render.mapping(api(ctx).post(f"/jobs/{job_id(job)}/cancel"))
    if json_out:
        render.print_json(data)
        return
    state = data.get("status")
    if state == "cancelled":
        message = f"job {data.get('id')} cancelled"
    elif state in render.FINAL:
        message = f"job {data.get('id')} had already ended: {state}"
    else:
        message = (
            f"cancel requested: job {data.get('id')} is stopping (SIGTERM, then SIGKILL after "
            "its grace period)"
        )
    render.console().print(render.text(message, 300))


def rerun(
    ctx: typer.Context,
    job: JobIdArg,
    wait_flag: Annotated[
        bool, typer.Option("--wait", help="Follow the new job to its end; exit with its status.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the new id.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Run a job again: the same spec as a new job."""
    client = api(ctx)
    data: Any = client.post(f"/jobs/{job_id(job)}/rerun")
    show_submitted(client, data, wait_flag=wait_flag, quiet=quiet, json_out=json_out)


def delete(
    ctx: typer.Context,
    job: JobIdArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
) -> None:
    """Delete an ended job with its logs and outputs."""
    ident = job_id(job)
    if not yes:
        if not sys.stdin.isatty():
            raise CliError(
                "delete removes the job with its logs and outputs; pass --yes to confirm"
            )
        typer.confirm(f"Delete job {ident} with its logs and outputs?", abort=True)
    api(ctx).request("DELETE", f"/jobs/{ident}")
    render.console().print(render.text(f"job {ident} deleted"))
