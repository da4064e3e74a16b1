"""A job spec from a YAML/JSON file and command-line flags (flags win) — pure but for reading
the file. The API validates every field; this only has to build the JSON faithfully and refuse
what cannot be JSON at all."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from cli.errors import CliError

MAX_JOB_FILE_BYTES = 1024 * 1024
"""A job file is a few lines; anything this large is a mistake (or an attack on the parser)."""
DIGEST = re.compile(r"[0-9a-f]{64}")


def load_job_file(path: Path) -> dict[str, Any]:
    """The spec in a YAML or JSON file (JSON is YAML), as a JSON-ready dict. Aliases are refused:
    `*ref` expands a small file into a huge spec (the 'billion laughs')."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_JOB_FILE_BYTES + 1)
    except OSError as exc:
        raise CliError(f"cannot read job file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_JOB_FILE_BYTES:
        raise CliError(f"job file {path} is larger than {MAX_JOB_FILE_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CliError(f"job file {path} is not UTF-8 text") from None
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise CliError(f"job file {path}: YAML aliases (*name) are not supported")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CliError(f"job file {path} is not valid YAML or JSON: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise CliError(
            f"job file {path} must be a mapping of spec fields (name, image, command, ...), "
            f"not {type(data).__name__}"
        )
    try:
        # Round-trip: YAML dates, sets and NaN are not JSON; keys become strings as in JSON.
        spec: dict[str, Any] = json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CliError(f"job file {path}: {exc}; quote such values to pass them as text") from None
    return spec


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} (line {mark.line + 1})" if mark is not None else str(problem)


def assignment(text: str, flag: str) -> tuple[str, str]:
    """'key=value' from a repeatable flag like --param; CliError naming the flag otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise CliError(f"{flag} {text!r} must look like KEY=VALUE")
    return key.strip(), value


def param_value(text: str) -> Any:
    """A --param value: JSON when it is JSON (5, 0.1, true, [1, 2]), else the text itself."""

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError:
        return text


def build_spec(
    base: dict[str, Any],
    *,
    name: str | None = None,
    image: str | None = None,
    command: list[str] | None = None,
    gpus: int | None = None,
    memory: str | None = None,
    cpus: float | None = None,
    params: list[str] | None = None,
    env: list[str] | None = None,
    labels: list[str] | None = None,
    timeout_seconds: int | None = None,
    max_retries: int | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """`base` (from a job file, or empty) with each given flag laid over it."""
    spec = dict(base)
    scalars = {
        "name": name,
        "image": image,
        "command": command or None,
        "timeout_seconds": timeout_seconds,
        "max_retries": max_retries,
        "priority": priority,
    }
    spec.update({key: value for key, value in scalars.items() if value is not None})
    resources = {"gpus": gpus, "memory": memory, "cpus": cpus}
    if any(value is not None for value in resources.values()):
        current = spec.get("resources")
        merged = dict(current) if isinstance(current, dict) else {}
        merged.update({key: value for key, value in resources.items() if value is not None})
        spec["resources"] = merged
    for field, items, convert in (
        ("params", params, param_value),
        ("env", env, str),
        ("labels", labels, str),
    ):
        if items:
            current = spec.get(field)
            merged = dict(current) if isinstance(current, dict) else {}
            for item in items:
                key, value = assignment(item, f"--{field.rstrip('s')}")
                merged[key] = convert(value)
            spec[field] = merged
    return spec


def local_workdir(spec: dict[str, Any], job_file: Path | None) -> Path | None:
    """A job file's `workdir` that is a directory rather than an uploaded digest: the path to
    pack, relative to the file. The spec keeps only digests, so the path is taken out."""
    value = spec.get("workdir")
    if value is None or (isinstance(value, str) and DIGEST.fullmatch(value)):
        return None
    if not isinstance(value, str) or not value.strip():
        raise CliError("workdir in the job file must be a directory or a sha256 digest")
    del spec["workdir"]
    path = Path(value).expanduser()
    if not path.is_absolute() and job_file is not None:
        path = job_file.parent / path
    return path
