"""What an uploaded workdir may contain — pure: it reads the archive from memory, writes nothing.

A workdir is a gzip-compressed tar a client uploads (`trainyard submit --workdir .`), named by
the sha256 of its bytes; the agent unpacks it and mounts it read-only at /workspace. The archive
comes from a user, and the agent unpacks it as root: so only relative paths, no '..', only
regular files and directories, and bounded counts and sizes (a gzip bomb stops at the bound).
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import PurePosixPath

from agent.core.errors import InvalidRequest

DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_MEMBERS = 20_000
"""Files and directories in one workdir."""
UNPACKED_FACTOR = 8
"""A workdir may unpack to at most this many times its compressed size limit."""
WORKSPACE = "/workspace"


@dataclass(frozen=True)
class WorkdirInfo:
    digest: str
    files: int
    unpacked_bytes: int


def digest_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not DIGEST.fullmatch(digest):
        raise InvalidRequest(
            f"{digest[:80]!r} is not a workdir id: use the sha256 of the archive's bytes "
            "(64 lowercase hex digits)"
        )
    return digest


def check_workdir(digest: str, data: bytes, *, max_unpacked_bytes: int) -> WorkdirInfo:
    """The archive's summary, or InvalidRequest saying what is wrong with it."""
    check_digest(digest)
    actual = digest_of(data)
    if actual != digest:
        raise InvalidRequest(
            f"the body's sha256 is {actual}, not {digest}: upload the archive under the "
            "digest of its own bytes"
        )
    files = 0
    unpacked = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for count, member in enumerate(archive, start=1):
                if count > MAX_MEMBERS:
                    raise InvalidRequest(
                        f"the workdir has more than {MAX_MEMBERS} files and directories"
                    )
                _check_member(member)
                if member.isfile():
                    files += 1
                    unpacked += member.size
                    if unpacked > max_unpacked_bytes:
                        raise InvalidRequest(
                            f"the workdir unpacks to more than {max_unpacked_bytes} bytes"
                        )
    except (tarfile.TarError, zlib.error, EOFError, OSError) as exc:
        raise InvalidRequest(f"the body is not a gzip-compressed tar archive: {exc}") from None
    return WorkdirInfo(digest, files, unpacked)


def _check_member(member: tarfile.TarInfo) -> None:
    name = member.name
    path = PurePosixPath(name)
    if (
        not name
        or "\x00" in name
        or path.is_absolute()
        or ".." in path.parts
        or name.startswith("\\")
    ):
        raise InvalidRequest(f"workdir entry {name[:80]!r}: paths must be relative, without '..'")
    if not (member.isfile() or member.isdir()):
        raise InvalidRequest(
            f"workdir entry {name[:80]!r} is not a regular file or directory (links, devices "
            "and pipes are refused)"
        )
