"""A job's files on this host: its log (tail, follow) and what it wrote under /outputs.

Each host owns its files: the agent that ran a job has them; the API reaches them here when
they are local (the embedded agent, or shared storage) and through that agent's endpoint
otherwise (agent/remote.py).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from agent.config import Settings
from agent.core.errors import InvalidRequest, JobNotFound
from agent.joblog import LogFollower, follow_positioned, job_log_path, tail

MAX_LISTED_OUTPUTS = 10_000
"""A listing stops here (and says so): a job could write millions of files."""


@dataclass(frozen=True)
class OutputFile:
    path: str  # relative to the job's /outputs, with '/'
    size: int
    modified: datetime


@dataclass(frozen=True)
class OutputListing:
    files: list[OutputFile]
    truncated: bool


class LocalJobFiles:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def has_log(self, job_id: str) -> bool:
        return job_log_path(self.settings.log_dir, job_id).exists()

    def has_outputs(self, job_id: str) -> bool:
        return self._outputs_dir(job_id).is_dir()

    def tail(self, job_id: str, lines: int) -> list[str]:
        return tail(job_log_path(self.settings.log_dir, job_id), lines)

    def follow(
        self,
        job_id: str,
        *,
        from_lines: int,
        after: tuple[str, int] | None,
        stop: Callable[[], bool],
        heartbeat: float | None,
    ) -> Iterator[tuple[str, str]]:
        return follow_positioned(
            job_log_path(self.settings.log_dir, job_id),
            from_lines=from_lines,
            after=after,
            stop=stop,
            heartbeat=heartbeat,
        )

    def follower(
        self, job_id: str, *, from_lines: int, after: tuple[str, int] | None
    ) -> LogFollower:
        return LogFollower(
            job_log_path(self.settings.log_dir, job_id), from_lines=from_lines, after=after
        )

    def outputs(self, job_id: str) -> OutputListing:
        """Regular files under the job's outputs, sorted; symbolic links are never followed
        (a job could point one at any file of the host)."""
        base = self._outputs_dir(job_id)
        files: list[OutputFile] = []
        for root, dirs, names in os.walk(base, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                full = Path(root) / name
                info = full.lstat()
                if not stat.S_ISREG(info.st_mode):
                    continue
                if len(files) >= MAX_LISTED_OUTPUTS:
                    return OutputListing(sorted(files, key=_path), truncated=True)
                modified = datetime.fromtimestamp(info.st_mtime, UTC)
                relative = full.relative_to(base).as_posix()
                files.append(OutputFile(relative, info.st_size, modified))
        return OutputListing(sorted(files, key=_path), truncated=False)

    def delete(self, job_id: str) -> None:
        """Remove the job's log (with its rotated files) and its outputs from this host."""
        log = job_log_path(self.settings.log_dir, job_id)
        for path in log.parent.glob(f"{job_id}.log*"):
            path.unlink(missing_ok=True)
        outputs = self._outputs_dir(job_id)
        if outputs.is_dir() and not outputs.is_symlink():
            # Never follows a link the job made inside: rmtree does not descend into links.
            shutil.rmtree(outputs, ignore_errors=True)

    def output_path(self, job_id: str, path: str) -> Path:
        """The file at `path` under the job's outputs. Refused: absolute paths, '..', links,
        anything that resolves outside the job's directory, and what is not a regular file."""
        relative = PurePosixPath(path)
        if not path or relative.is_absolute() or ".." in relative.parts or "\x00" in path:
            raise InvalidRequest(
                f"output path {path!r} must be relative to the job's outputs, without '..'"
            )
        base = self._outputs_dir(job_id)
        candidate = base.joinpath(*relative.parts)
        current = base
        for part in relative.parts:  # no component may be a link
            current = current / part
            if current.is_symlink():
                raise JobNotFound(f"job {job_id} has no output file {path!r}")
        try:
            resolved = candidate.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise JobNotFound(f"job {job_id} has no output file {path!r}") from None
        if not resolved.is_relative_to(base.resolve()) or not resolved.is_file():
            raise JobNotFound(f"job {job_id} has no output file {path!r}")
        return resolved

    def _outputs_dir(self, job_id: str) -> Path:
        if not job_id.isalnum():
            raise JobNotFound(f"no job has the id {job_id!r}")
        return (self.settings.outputs_dir / job_id).absolute()


def _path(file: OutputFile) -> str:
    return file.path
