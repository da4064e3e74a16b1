"""`trainyard submit`: a job from a file and/or flags, with an optional workdir and --wait."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperCommand

from cli import fmt, render, spec, wait, workdir
from cli.client import Api, error_message
from cli.context import JsonFlag, api
from cli.errors import CliError

COMMAND_KEY = "trainyard.command"
MAX_NOTES = 20
"""Skipped symlinks and special files listed one by one; past this, only how many more."""


class DashDashCommand(TyperCommand):
    """Everything after the first `--` is the job's command, taken out before click parses
    the rest (click would otherwise mix it into the positional FILE)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # ctx: typer's Context (typer vendors click, so click.Context is another class)
        if "--" in args:
            at = args.index("--")
            ctx.meta[COMMAND_KEY] = args[at + 1 :]
            args = args[:at]
        return super().parse_args(ctx, args)


Repeated = Annotated[list[str] | None, typer.Option(show_default=False)]


def submit(
    ctx: typer.Context,
    job_file: Annotated[
        Path | None,
        typer.Argument(
            help="A YAML or JSON job spec (every field of POST /jobs); flags override it.",
            show_default=False,
        ),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="A name for people.")] = None,
    image: Annotated[str | None, typer.Option("--image", "-i", help="Docker image.")] = None,
    gpus: Annotated[int | None, typer.Option("--gpus", "-g", help="Whole GPUs.")] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", "-m", help="Memory limit: 512m, 4g, 2Gi.")
    ] = None,
    cpus: Annotated[float | None, typer.Option("--cpus", help="CPU cores, e.g. 1.5.")] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="A hyper-parameter (VALUE as JSON when it is); repeatable.",
            metavar="KEY=VALUE",
            show_default=False,
        ),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            "-e",
            help="An environment variable; repeatable.",
            metavar="KEY=VALUE",
            show_default=False,
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option(
            "--label",
            "-l",
            help="A label (ls --label finds it); repeatable.",
            metavar="KEY=VALUE",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        int | None, typer.Option("--timeout", help="Seconds before the job is stopped.")
    ] = None,
    max_retries: Annotated[int | None, typer.Option("--max-retries", help="Retries.")] = None,
    priority: Annotated[int | None, typer.Option("--priority", help="Higher runs first.")] = None,
    workdir_path: Annotated[
        Path | None,
        typer.Option(
            "--workdir",
            "-w",
            help="Pack this directory (minus .gitignore/.trainyardignore) and run the job in "
            "it, read-only at /workspace.",
            show_default=False,
        ),
    ] = None,
    wait_flag: Annotated[
        bool, typer.Option("--wait", help="Follow the job to its end; exit with its status.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the job id.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Queue a job: `trainyard submit job.yaml`, or flags and `-- python3 train.py ...`."""
    command: list[str] | None = ctx.meta.get(COMMAND_KEY)
    if command is not None and not command:
        raise CliError("nothing after `--`: give the job's command there, or leave `--` out")
    base = spec.load_job_file(job_file) if job_file is not None else {}
    directory = workdir_path or spec.local_workdir(base, job_file)
    body = spec.build_spec(
        base,
        name=name,
        image=image,
        command=command,
        gpus=gpus,
        memory=memory,
        cpus=cpus,
        params=param,
        env=env,
        labels=label,
        timeout_seconds=timeout,
        max_retries=max_retries,
        priority=priority,
    )
    client = api(ctx)
    err = render.console(stderr=True)
    if directory is not None:
        body["workdir"] = upload_workdir(client, directory, err)
    job = client.post("/jobs", json=body)
    show_submitted(client, job, wait_flag=wait_flag, quiet=quiet, json_out=json_out)


def show_submitted(
    client: Api, job: dict[str, Any], *, wait_flag: bool, quiet: bool, json_out: bool
) -> None:
    """Print a new job (and with `wait_flag` follow it, exiting with its status)."""
    err = render.console(stderr=True)
    out = render.console()
    if not isinstance(job, dict) or not isinstance(job.get("id"), str):
        raise CliError("the API's reply has no job id")
    if quiet:
        sys.stdout.write(f"{job['id']}\n")  # the id alone, for $(trainyard submit -q ...)
    elif not json_out:
        out.print(render.text(f"submitted job {job['id']} ({job.get('name')})", 300))
    if not wait_flag:
        if json_out:
            render.print_json(job)
        return
    job = wait.wait_for(client, job, err)
    if json_out:
        render.print_json(job)
    elif not quiet:
        out.print(wait.outcome_line(job))
    raise typer.Exit(wait.exit_status(job))


def upload_workdir(client: Api, directory: Path, err: Console) -> str:
    """Pack `directory`, upload it unless the API has it already, and return its digest."""
    limit = _max_bytes()
    packed = workdir.pack(directory, limit)
    for note in packed.notes[:MAX_NOTES]:
        err.print(render.text(f"note: {note}", 500))
    if len(packed.notes) > MAX_NOTES:
        err.print(f"note: ... and {len(packed.notes) - MAX_NOTES} more left out")
    short = packed.digest[:12]
    what = f"{packed.files} file{'' if packed.files == 1 else 's'}, {fmt.size(packed.raw_bytes)}"
    if client.exists(f"/workdirs/{packed.digest}"):
        err.print(render.text(f"workdir already uploaded (sha256 {short}, {what})"))
        return packed.digest
    response = client.send(
        "PUT",
        f"/workdirs/{packed.digest}",
        content=packed.data,
        headers={"Content-Type": "application/gzip"},
    )
    if response.status_code in (404, 405):
        raise CliError(
            f"the API at {client.url} does not take workdirs (PUT /workdirs answered "
            f"{response.status_code}); it is older than this CLI"
        )
    if response.status_code >= 400:
        raise CliError(f"workdir upload refused: {error_message(response)}")
    err.print(
        render.text(
            f"workdir uploaded (sha256 {short}, {what}, {fmt.size(len(packed.data))} compressed)"
        )
    )
    return packed.digest


def _max_bytes() -> int:
    """The upload limit: the API's default, or TRAINYARD_WORKDIR_MAX_BYTES when set (the
    server's variable: an admin who raised it can tell users to raise it too)."""
    value = os.environ.get("TRAINYARD_WORKDIR_MAX_BYTES", "").strip()
    if not value:
        return workdir.DEFAULT_MAX_BYTES
    if not value.isdigit() or int(value) <= 0:
        raise CliError("TRAINYARD_WORKDIR_MAX_BYTES must be a positive number of bytes")
    return int(value)
