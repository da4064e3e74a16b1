"""The `trainyard` console script: the typer app, its shared options, and the one place where
errors become a single line on stderr and an exit code."""

from __future__ import annotations

import sys
from typing import Annotated

import httpx
import typer

from cli.client import DEFAULT_URL, one_line
from cli.commands import jobs, submit, system
from cli.context import Target
from cli.errors import CliError

app = typer.Typer(
    name="trainyard",
    help="Submit and watch Trainyard training jobs (talks to the API at TRAINYARD_URL).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    url: Annotated[
        str, typer.Option("--url", envvar="TRAINYARD_URL", help="The Trainyard API.")
    ] = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="TRAINYARD_TOKEN",
            help="API token, sent as a Bearer token.",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = Target(url=url, token=token)


app.command("submit", cls=submit.DashDashCommand)(submit.submit)
app.command("ls")(jobs.ls)
app.command("show")(jobs.show)
app.command("logs")(jobs.logs)
app.command("cancel")(jobs.cancel)
app.command("rerun")(jobs.rerun)
app.command("delete")(jobs.delete)
app.command("stats")(system.stats)
app.command("agents")(system.agents)
app.command("top")(system.top)


def main() -> None:
    """Run the app; a CliError (or an HTTP failure no command caught) is one line, no trace."""
    try:
        app()
    except CliError as exc:
        _fail(exc.message, exc.exit_code)
    except httpx.HTTPError as exc:
        _fail(f"talking to the Trainyard API failed: {one_line(str(exc), 300)}", 1)
    except KeyboardInterrupt:
        sys.exit(130)


def _fail(message: str, code: int) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)
