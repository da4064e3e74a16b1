"""A job's outputs on this host: listing and safe paths (a hostile job writes /outputs)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import jobfiles
from agent.config import Settings
from agent.core.errors import InvalidRequest, JobNotFound
from agent.jobfiles import LocalJobFiles

JOB = "a" * 32


@pytest.fixture
def files(make_settings: Callable[..., Settings], tmp_path: Path) -> LocalJobFiles:
    settings = make_settings()
    outputs = settings.outputs_dir / JOB
    (outputs / "ckpt").mkdir(parents=True)
    (outputs / "result.json").write_text('{"ok": true}')
    (outputs / "ckpt" / "epoch-1.npz").write_bytes(b"x" * 10)
    secret = tmp_path / "host-secret"
    secret.write_text("root's secrets")
    os.symlink(secret, outputs / "leak")  # a job pointing a link at a host file
    os.symlink(tmp_path, outputs / "ckpt" / "up")  # and at a host directory
    return LocalJobFiles(settings)


def test_listing_has_regular_files_only_sorted_with_sizes(files: LocalJobFiles) -> None:
    listing = files.outputs(JOB)
    assert [(f.path, f.size) for f in listing.files] == [
        ("ckpt/epoch-1.npz", 10),
        ("result.json", 12),
    ]
    assert listing.truncated is False


def test_a_file_inside_is_served(files: LocalJobFiles) -> None:
    assert files.output_path(JOB, "ckpt/epoch-1.npz").read_bytes() == b"x" * 10


@pytest.mark.parametrize(
    "path", ["../../trainyard.db", "/etc/passwd", "ckpt/../../x", "", "a\x00b"]
)
def test_paths_that_leave_the_job_directory_are_refused(files: LocalJobFiles, path: str) -> None:
    with pytest.raises(InvalidRequest):
        files.output_path(JOB, path)


@pytest.mark.parametrize("path", ["leak", "ckpt/up/host-secret", "missing", "ckpt"])
def test_links_missing_files_and_directories_are_not_found(files: LocalJobFiles, path: str) -> None:
    with pytest.raises(JobNotFound):
        files.output_path(JOB, path)


def test_listing_is_bounded(files: LocalJobFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobfiles, "MAX_LISTED_OUTPUTS", 1)
    listing = files.outputs(JOB)
    assert len(listing.files) == 1 and listing.truncated is True


def test_odd_job_ids_are_not_found(files: LocalJobFiles) -> None:
    with pytest.raises(JobNotFound):
        files.output_path("../" + JOB, "result.json")
