"""The CLI's workdir packing: deterministic bytes, ignore rules, what stays out, the size limit."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from cli import workdir
from cli.errors import CliError


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


def names(data: bytes) -> list[str]:
    return [m.name for m in members(data)]


FILES = {
    "train.py": "print('hi')\n",
    "pkg/__init__.py": "",
    "pkg/model.py": "W = 1\n",
    "data/small.csv": "a,b\n1,2\n",
}


def test_the_same_tree_packs_to_the_same_bytes_whatever_the_order_times_and_owner(
    tmp_path: Path,
) -> None:
    first = make_tree(tmp_path / "a", FILES)
    second = make_tree(tmp_path / "b", dict(reversed(FILES.items())))  # created in another order
    for path in second.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    one, two = workdir.pack(first), workdir.pack(second)
    assert one.data == two.data
    assert one.digest == two.digest
    assert one.files == 4
    assert one.raw_bytes == sum(len(v) for v in FILES.values())
    (second / "pkg" / "model.py").write_text("W = 2\n")
    assert workdir.pack(second).digest != one.digest


def test_entries_are_sorted_and_carry_no_times_owners_or_user_names(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "w", FILES)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o700)
    packed = workdir.pack(root)
    assert packed.data[4:8] == b"\0\0\0\0"  # the gzip header's mtime
    assert names(packed.data) == [
        "data",
        "data/small.csv",
        "pkg",
        "pkg/__init__.py",
        "pkg/model.py",
        "run.sh",
        "train.py",
    ]
    for member in members(packed.data):
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (
            0,
            0,
            0,
            "",
            "",
        )
        assert member.isdir() or member.isfile()
        expected = 0o755 if member.isdir() or member.name == "run.sh" else 0o644
        assert member.mode == expected, member.name


def test_gitignore_and_trainyardignore_are_honoured_at_every_level(tmp_path: Path) -> None:
    root = make_tree(
        tmp_path / "w",
        {
            ".gitignore": "*.log\nsecret.txt\nbuild/\n",
            ".trainyardignore": "data/*.bin\n!keep.log\n",
            "train.py": "",
            "secret.txt": "s3cr3t",
            "run.log": "",
            "keep.log": "",
            "build/out.o": "",
            "data/big.bin": "",
            "data/small.csv": "",
            "sub/.gitignore": "local.txt\n!again.log\n",
            "sub/local.txt": "",
            "sub/again.log": "",
            "sub/code.py": "",
            "other/local.txt": "",  # sub's rules do not reach here
        },
    )
    assert names(workdir.pack(root).data) == [
        ".gitignore",
        ".trainyardignore",
        "data",
        "data/small.csv",
        "keep.log",
        "other",
        "other/local.txt",
        "sub",
        "sub/.gitignore",
        "sub/again.log",
        "sub/code.py",
        "train.py",
    ]


def test_git_symlinks_and_special_files_stay_out_with_a_note_for_the_last_two(
    tmp_path: Path,
) -> None:
    root = make_tree(tmp_path / "w", {"train.py": "", ".git/HEAD": "ref", "sub/.git/x": ""})
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "linked_dir").symlink_to(root / "sub")
    os.mkfifo(root / "pipe")
    packed = workdir.pack(root)
    assert names(packed.data) == ["sub", "train.py"]
    assert packed.notes == [
        "skipped symlink linked_dir",
        "skipped symlink passwd",
        "skipped pipe (not a regular file or directory)",
    ]


def test_above_the_limit_it_is_refused_naming_the_largest_files(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "w", {"train.py": "print(1)\n"})
    (root / "weights.bin").write_bytes(os.urandom(200 * 1024))  # does not compress
    with pytest.raises(CliError) as refused:
        workdir.pack(root, max_bytes=64 * 1024)
    message = refused.value.message
    assert "more than 64 KiB compressed, the upload limit" in message
    assert "largest: weights.bin (200 KiB), train.py (9 B)" in message
    assert ".trainyardignore" in message
    (root / ".trainyardignore").write_text("*.bin\n")
    assert names(workdir.pack(root, max_bytes=64 * 1024).data) == [".trainyardignore", "train.py"]


def test_too_many_entries_and_a_missing_directory_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_tree(tmp_path / "w", {f"f{i}.py": "" for i in range(5)})
    monkeypatch.setattr(workdir, "MAX_ENTRIES", 3)
    with pytest.raises(CliError, match="more than 3 files and directories"):
        workdir.pack(root)
    with pytest.raises(CliError, match="is not a directory"):
        workdir.pack(tmp_path / "nowhere")


def test_the_archive_unpacks_to_the_files(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "w", FILES)
    with tarfile.open(fileobj=io.BytesIO(workdir.pack(root).data), mode="r:gz") as tar:
        tar.extractall(tmp_path / "out", filter="data")
    for rel, content in FILES.items():
        assert (tmp_path / "out" / rel).read_text() == content
