"""Rich views of API replies: job tables, one job in detail, stats, agents. Every text that
came from the server goes through `text()`: no markup, no terminal escapes."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from cli import fmt
from cli.client import one_line

STATUS_STYLES = {
    "queued": "yellow",
    "starting": "cyan",
    "running": "bold cyan",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}
FINAL = frozenset({"succeeded", "failed", "cancelled"})
PIPE_WIDTH = 200
"""Columns when stdout is not a terminal: rich would assume 80 and cut ids in `ls | grep`."""


def console(*, stderr: bool = False) -> Console:
    probe = Console(stderr=stderr)
    if probe.is_terminal or "COLUMNS" in os.environ:
        return Console(stderr=stderr, highlight=False)
    return Console(stderr=stderr, highlight=False, width=PIPE_WIDTH)


def print_json(data: Any) -> None:
    """JSON for scripts, exactly what the API sent (ASCII-escaped: safe for any terminal)."""
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def mapping(value: object) -> dict[str, Any]:
    """A JSON object from the server, or {} when it sent something else."""
    return value if isinstance(value, dict) else {}


def text(value: object, limit: int = 200, style: str = "") -> Text:
    if value is None or value == "":
        return Text("-", style="dim")
    return Text(one_line(str(value), limit), style=style)


def status(value: object) -> Text:
    name = str(value)
    return text(name, 20, STATUS_STYLES.get(name, ""))


def memory(job: dict[str, Any]) -> str:
    return fmt.size(mapping(job.get("resources")).get("memory_bytes"))


def gpus(job: dict[str, Any]) -> str:
    count = mapping(job.get("resources")).get("gpus")
    return str(count) if count else "-"


def run_time(job: dict[str, Any]) -> float | None:
    return fmt.between(job.get("started_at"), job.get("finished_at"))


def progress_cell(fraction: object, width: int = 16) -> RenderableType:
    value = fmt.real(fraction)
    if value is None:
        return Text("-", style="dim")
    bar = ProgressBar(total=1.0, completed=max(0.0, min(1.0, value)), width=width)
    table = Table.grid(padding=(0, 1))
    table.add_row(bar, Text(fmt.percent(value)))
    return table


def metrics_line(metrics: object, limit: int = 4) -> Text:
    """'loss=0.412 accuracy=0.88' from latest_metrics (counters like epoch left out)."""
    if not isinstance(metrics, dict) or not metrics:
        return Text("-", style="dim")
    skip = {"epoch", "epochs", "step", "total_steps", "max_steps", "num_steps"}
    items = [(k, v) for k, v in metrics.items() if k not in skip][:limit]
    return text(" ".join(f"{k}={fmt.number(v)}" for k, v in items), 120)


def jobs_table(items: list[dict[str, Any]], caption: str | None = None) -> Table:
    table = Table(caption=caption, caption_justify="left", box=None, header_style="bold")
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME", max_width=32, no_wrap=True, overflow="ellipsis")
    table.add_column("STATUS", no_wrap=True)
    table.add_column("PROGRESS", no_wrap=True)
    table.add_column("CREATED", no_wrap=True)
    table.add_column("RAN", no_wrap=True)
    table.add_column("GPUS", justify="right")
    table.add_column("MEMORY", justify="right", no_wrap=True)
    table.add_column("OUTCOME", no_wrap=True)
    for job in items:
        outcome = job.get("outcome") or ""
        exit_code = job.get("exit_code")
        if exit_code is not None and job.get("status") in FINAL:
            outcome = f"{outcome} ({exit_code})" if outcome else str(exit_code)
        table.add_row(
            text(job.get("id"), 40),
            text(job.get("name"), 128),
            status(job.get("status")),
            Text(fmt.percent(job.get("progress"))),
            Text(fmt.age(job.get("created_at"))),
            Text(fmt.duration(run_time(job))),
            Text(gpus(job)),
            Text(memory(job)),
            text(outcome or None, 40),
        )
    return table


def job_detail(job: dict[str, Any]) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    command = job.get("command")
    rows: list[tuple[str, RenderableType]] = [
        ("id", text(job.get("id"), 40)),
        ("name", text(job.get("name"))),
        ("status", status(job.get("status"))),
        ("image", text(job.get("image"))),
        ("command", text(" ".join(map(str, command)) if isinstance(command, list) else None)),
        ("resources", Text(_resources(job))),
        ("created", Text(fmt.age(job.get("created_at")))),
        ("ran", Text(fmt.duration(run_time(job)))),
        ("agent", text(job.get("agent_id"))),
    ]
    if job.get("progress") is not None:
        rows.append(("progress", progress_cell(job.get("progress"), 30)))
    if job.get("eta_seconds") is not None:
        rows.append(("eta", Text(fmt.duration(job.get("eta_seconds")))))
    if job.get("latest_metrics"):
        rows.append(("metrics", metrics_line(job.get("latest_metrics"), limit=12)))
    for key in ("labels", "params"):
        if job.get(key):
            rows.append((key, text(json.dumps(job.get(key), sort_keys=True), 300)))
    if job.get("workdir"):
        rows.append(("workdir", text(f"sha256 {job.get('workdir')} at /workspace")))
    outcome = job.get("outcome")
    if outcome:
        rows.append(("outcome", text(f"{outcome} (exit {job.get('exit_code')})")))
    for key in ("reason", "unschedulable_reason"):
        if job.get(key):
            rows.append((key.replace("_", " "), text(job.get(key), 2000, "yellow")))
    if job.get("next_attempt_at"):
        rows.append(("next attempt", text(job.get("next_attempt_at"))))
    for label, value in rows:
        grid.add_row(label, value)
    attempts = job.get("attempts")
    if not isinstance(attempts, list) or not attempts:
        return grid
    return Group(grid, Text(""), attempts_table(attempts))


def _resources(job: dict[str, Any]) -> str:
    resources = job.get("resources")
    if not isinstance(resources, dict):
        return "-"
    parts = [f"{fmt.size(resources.get('memory_bytes'))} memory", f"{resources.get('cpus')} CPUs"]
    if resources.get("gpus"):
        parts.append(f"{resources.get('gpus')} GPUs")
    return ", ".join(parts)


def attempts_table(attempts: list[Any]) -> Table:
    table = Table(title="attempts", title_justify="left", box=None, header_style="bold")
    for name in ("#", "AGENT", "STARTED", "RAN", "EXIT", "OUTCOME", "GPUS", "REASON"):
        table.add_column(name, no_wrap=name != "REASON")
    for attempt in attempts:
        if not isinstance(attempt, dict):
            continue
        gpu_ids = attempt.get("gpu_ids") or []
        table.add_row(
            text(attempt.get("number"), 10),
            text(attempt.get("agent_id"), 64),
            Text(fmt.age(attempt.get("started_at") or attempt.get("claimed_at"))),
            Text(fmt.duration(fmt.between(attempt.get("started_at"), attempt.get("finished_at")))),
            text(attempt.get("exit_code"), 10),
            text(attempt.get("outcome"), 20),
            text(",".join(map(str, gpu_ids)) or None, 60),
            text(attempt.get("reason"), 500),
        )
    return table


def stats_view(stats: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    counts = mapping(stats.get("counts"))
    for name in ("queued", "starting", "running", "succeeded", "failed", "cancelled"):
        grid.add_row(status(name), Text(str(counts.get(name, 0))))
    rate = stats.get("success_rate")
    grid.add_row("total", Text(str(stats.get("total", "-"))))
    grid.add_row("success rate", Text(fmt.percent(rate) if isinstance(rate, int | float) else "-"))
    grid.add_row("mean queue wait", Text(fmt.duration(stats.get("mean_queue_wait_seconds"))))
    grid.add_row("mean run time", Text(fmt.duration(stats.get("mean_run_seconds"))))
    grid.add_row("queue bound", Text(str(stats.get("queue_bound", "-"))))
    return grid


def agents_table(agents: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("ID", "HOST", "ALIVE", "HEARTBEAT", "JOBS", "MEMORY FREE", "CPUS FREE"):
        table.add_column(name, no_wrap=True)
    table.add_column("GPUS FREE", no_wrap=True)
    table.add_column("ENGINE")
    for agent in agents:
        mem, cpus, gpu, engine = (
            mapping(agent.get(k)) for k in ("memory", "cpus", "gpus", "engine")
        )
        alive = agent.get("alive") is True
        table.add_row(
            text(agent.get("id"), 64),
            text(agent.get("hostname"), 64),
            Text("yes" if alive else "no", style="green" if alive else "red"),
            Text(fmt.age(agent.get("heartbeat_at"))),
            Text(f"{agent.get('running', '-')}/{agent.get('slots', '-')}"),
            Text(f"{fmt.size(mem.get('free_bytes'))} / {fmt.size(mem.get('total_bytes'))}"),
            Text(f"{cpus.get('free', '-')} / {cpus.get('total', '-')}"),
            Text(f"{len(gpu.get('free') or [])} / {len(gpu.get('ids') or [])}"),
            text(engine.get("version") if engine.get("reachable") else engine.get("error"), 200),
        )
    return table


def top_table(jobs: list[dict[str, Any]], gpu_ids: dict[str, list[str]]) -> Table:
    table = Table(box=None, header_style="bold")
    table.add_column("ID", no_wrap=True)
    table.add_column("NAME", max_width=28, no_wrap=True, overflow="ellipsis")
    table.add_column("STATUS", no_wrap=True)
    table.add_column("PROGRESS", no_wrap=True)
    table.add_column("ETA", no_wrap=True)
    table.add_column("RAN", no_wrap=True)
    table.add_column("GPUS", no_wrap=True)
    table.add_column("MEMORY", justify="right", no_wrap=True)
    table.add_column("AGENT", no_wrap=True)
    table.add_column("METRICS")
    for job in jobs:
        held = gpu_ids.get(str(job.get("id")), [])
        table.add_row(
            text(job.get("id"), 40),
            text(job.get("name"), 128),
            status(job.get("status")),
            progress_cell(job.get("progress")),
            Text(fmt.duration(job.get("eta_seconds"))),
            Text(fmt.duration(run_time(job))),
            text(",".join(held) if held else gpus(job), 60),
            Text(memory(job)),
            text(job.get("agent_id"), 64),
            metrics_line(job.get("latest_metrics")),
        )
    return table
