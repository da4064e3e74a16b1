"""Commands on the whole system: stats, agents, top."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.text import Text

from cli import render
from cli.client import Api
from cli.context import JsonFlag, api
from cli.errors import CliError

TOP_JOBS = 100
"""Running jobs `top` shows (one page of the API)."""
MIN_INTERVAL = 0.2


def stats(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Jobs by status, success rate, mean queue wait and run time."""
    data = api(ctx).get("/stats")
    if json_out:
        render.print_json(data)
        return
    render.console().print(render.stats_view(render.mapping(data)))


def agents(ctx: typer.Context, json_out: JsonFlag = False) -> None:
    """Every registered agent: alive, heartbeat, free memory, CPUs and GPUs, its engine."""
    data = api(ctx).get("/agents")
    if json_out:
        render.print_json(data)
        return
    items = [a for a in data if isinstance(a, dict)] if isinstance(data, list) else []
    render.console().print(render.agents_table(items))


def top(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Show one snapshot and exit.")] = False,
    iterations: Annotated[
        int | None, typer.Option("--iterations", help="Exit after this many refreshes.", min=1)
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON snapshot per refresh, one per line.")
    ] = False,
) -> None:
    """Running jobs with their progress and GPUs, refreshed until Ctrl-C."""
    if interval < MIN_INTERVAL:
        raise CliError(f"--interval must be at least {MIN_INTERVAL} seconds")
    client = api(ctx)
    count = 1 if once else iterations
    try:
        if json_out:
            for _ in _ticks(count, interval):
                sys.stdout.write(json.dumps(snapshot(client)) + "\n")
                sys.stdout.flush()
            return
        if count == 1:
            render.console().print(_view(snapshot(client), interval))
            return
        with Live(console=render.console(), auto_refresh=False) as live:
            for _ in _ticks(count, interval):
                live.update(_view(snapshot(client), interval), refresh=True)
    except KeyboardInterrupt:
        return


def _ticks(count: int | None, interval: float) -> Any:
    """0, 1, 2, ... (`count` of them, or forever), sleeping `interval` between them."""
    done = 0
    while count is None or done < count:
        if done:
            time.sleep(interval)
        yield done
        done += 1


def snapshot(client: Api) -> dict[str, Any]:
    """Starting and running jobs, the GPU ids each holds (from the agents), status counts."""
    jobs: list[dict[str, Any]] = []
    for state in ("running", "starting"):
        page = render.mapping(client.get("/jobs", params={"status": state, "limit": TOP_JOBS}))
        jobs += [j for j in page.get("items") or [] if isinstance(j, dict)]
    gpu_ids: dict[str, list[str]] = {}
    agents_list = client.get("/agents")
    for agent in agents_list if isinstance(agents_list, list) else []:
        held = render.mapping(render.mapping(agent).get("gpus")).get("held")
        for gpu, holder in render.mapping(held).items():
            gpu_ids.setdefault(str(holder), []).append(str(gpu))
    counts = render.mapping(render.mapping(client.get("/stats")).get("counts"))
    return {"jobs": jobs, "gpus": gpu_ids, "counts": counts}


def _view(snap: dict[str, Any], interval: float) -> Group:
    counts = snap["counts"]
    summary = " · ".join(
        f"{counts.get(name, 0)} {name}" for name in ("running", "starting", "queued", "failed")
    )
    footer = Text(f"{summary}   (every {interval:g}s; Ctrl-C quits)", style="dim")
    if not snap["jobs"]:
        return Group(Text("no running jobs"), footer)
    return Group(render.top_table(snap["jobs"], snap["gpus"]), footer)
