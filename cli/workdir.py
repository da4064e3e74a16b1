"""Pack a directory as the deterministic tar.gz the API stores by its sha256 (PUT /workdirs).

The same tree always gives the same bytes, so it is uploaded once: entries sorted, mtime 0,
uid/gid 0 and no user names, only regular files (mode 644, or 755 when executable) and
directories (755); `.git`, symlinks and special files stay out (with a note for the last two);
gzip with mtime 0 and no file name."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cli import fmt
from cli.errors import CliError
from cli.ignore import IgnoreRules

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""The API's default limit on an upload (TRAINYARD_WORKDIR_MAX_BYTES, gzip-compressed)."""
MAX_ENTRIES = 100_000
"""Files and directories in one workdir: more is a data set, not code."""
SKIPPED_DIRS = frozenset({".git"})
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


@dataclass(frozen=True)
class Entry:
    rel: str
    """Path inside the archive, POSIX separators."""
    is_dir: bool
    size: int = 0


@dataclass
class Tree:
    entries: list[Entry] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What was left out that the user may not expect (symlinks, special files)."""

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if not e.is_dir]


@dataclass(frozen=True)
class Packed:
    data: bytes
    digest: str
    files: int
    raw_bytes: int
    notes: list[str]


class _TooLarge(Exception):
    pass


class _BoundedBuffer(io.RawIOBase):
    """Collects written bytes and stops at `limit`: packing a huge tree ends early."""

    def __init__(self, limit: int) -> None:
        self.buffer = bytearray()
        self.limit = limit

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if len(self.buffer) + len(data) > self.limit:
            raise _TooLarge
        self.buffer += data
        return len(data)


def scan(root: Path) -> Tree:
    """Every entry of `root` that is packed, in archive order (depth first, sorted by name)."""
    if not root.is_dir():
        raise CliError(f"workdir {root} is not a directory")
    rules = IgnoreRules()
    tree = Tree()
    pending: list[tuple[Path, str]] = [(root, "")]
    while pending:
        directory, rel = pending.pop()
        rules.load(directory, rel)
        subdirs: list[tuple[Path, str]] = []
        for child, child_rel in _children(directory, rel, tree):
            if len(tree.entries) >= MAX_ENTRIES:
                raise CliError(
                    f"workdir {root} has more than {MAX_ENTRIES} files and directories; "
                    "list what the job does not need in .trainyardignore"
                )
            try:
                status = child.lstat()
            except FileNotFoundError:
                continue  # removed while we looked
            mode = status.st_mode
            is_dir = stat.S_ISDIR(mode)
            if (is_dir and child.name in SKIPPED_DIRS) or rules.ignored(child_rel, is_dir=is_dir):
                continue
            if stat.S_ISLNK(mode):
                tree.notes.append(f"skipped symlink {child_rel}")
            elif is_dir:
                tree.entries.append(Entry(child_rel, is_dir=True))
                subdirs.append((child, child_rel))
            elif stat.S_ISREG(mode):
                tree.entries.append(Entry(child_rel, is_dir=False, size=status.st_size))
            else:
                tree.notes.append(f"skipped {child_rel} (not a regular file or directory)")
        # Depth first in sorted order: a directory's entries right after it.
        pending.extend(reversed(subdirs))
    tree.entries = _depth_first(tree.entries)
    return tree


def _children(directory: Path, rel: str, tree: Tree) -> Iterator[tuple[Path, str]]:
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise CliError(f"cannot list {directory}: {exc.strerror or exc}") from None
    for name in names:
        child_rel = f"{rel}/{name}" if rel else name
        try:
            child_rel.encode("utf-8")
        except UnicodeEncodeError:
            tree.notes.append(f"skipped {child_rel!r} (its name is not UTF-8)")
            continue
        yield directory / name, child_rel


def _depth_first(entries: list[Entry]) -> list[Entry]:
    """Archive order that depends only on the names: sorted by path components."""
    return sorted(entries, key=lambda e: e.rel.split("/"))


def pack(root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> Packed:
    """The tar.gz of `root` and its sha256; CliError (naming the largest files) above
    `max_bytes` compressed."""
    tree = scan(root)
    sink = _BoundedBuffer(max_bytes)
    try:
        with (
            gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for entry in tree.entries:
                _add(tar, root, entry)
    except _TooLarge:
        raise CliError(_too_large(root, tree, max_bytes)) from None
    data = bytes(sink.buffer)
    return Packed(
        data=data,
        digest=hashlib.sha256(data).hexdigest(),
        files=len(tree.files),
        raw_bytes=sum(e.size for e in tree.files),
        notes=tree.notes,
    )


def _add(tar: tarfile.TarFile, root: Path, entry: Entry) -> None:
    info = tarfile.TarInfo(entry.rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.is_dir:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        return
    path = root / entry.rel
    try:
        # No symlink swapped in since the scan; size and bytes from the same open file.
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)
        with os.fdopen(fd, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise CliError(f"{entry.rel} changed while packing the workdir; try again")
            info.size = status.st_size
            info.mode = 0o755 if status.st_mode & 0o111 else 0o644
            tar.addfile(info, handle)
    except OSError as exc:
        raise CliError(f"cannot pack {path}: {exc.strerror or exc}") from None


def _too_large(root: Path, tree: Tree, max_bytes: int) -> str:
    largest = sorted(tree.files, key=lambda e: e.size, reverse=True)[:3]
    shown = ", ".join(f"{e.rel} ({fmt.size(e.size)})" for e in largest)
    return (
        f"workdir {root} is more than {fmt.size(max_bytes)} compressed, the upload limit "
        f"({len(tree.files)} files, {fmt.size(sum(e.size for e in tree.files))} in all; "
        f"largest: {shown}); list what the job does not need in .trainyardignore"
    )
