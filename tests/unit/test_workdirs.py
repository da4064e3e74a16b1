"""What an uploaded workdir may hold: checked before it is stored and again before unpacking."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest

from agent.core.errors import InvalidRequest
from agent.core.workdirs import MAX_MEMBERS, check_digest, check_workdir

LIMIT = 10 * 2**20


def archive(*members: tarfile.TarInfo, data: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member in members:
            content = (data or {}).get(member.name)
            tar.addfile(member, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def file(name: str, content: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def files(**contents: bytes) -> bytes:
    pairs = [file(name, content) for name, content in contents.items()]
    return archive(*(info for info, _ in pairs), data={i.name: c for i, c in pairs})


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_tree_of_files_and_directories_passes_with_its_summary() -> None:
    directory = tarfile.TarInfo("pkg")
    directory.type = tarfile.DIRTYPE
    one, two = file("train.py", b"print(1)\n"), file("pkg/util.py", b"x = 1\n")
    data = archive(directory, one[0], two[0], data={"train.py": one[1], "pkg/util.py": two[1]})
    info = check_workdir(digest(data), data, max_unpacked_bytes=LIMIT)
    assert (info.files, info.unpacked_bytes) == (2, len(one[1]) + len(two[1]))


def test_the_digest_must_be_the_sha256_of_the_bytes() -> None:
    data = files(a=b"1")
    with pytest.raises(InvalidRequest, match="the body's sha256 is"):
        check_workdir("0" * 64, data, max_unpacked_bytes=LIMIT)


@pytest.mark.parametrize("bad", ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" * 20])
def test_a_digest_is_64_lowercase_hex_digits(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="64 lowercase hex digits"):
        check_digest(bad)


def special(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (file("/etc/cron.d/x")[0], "must be relative"),
        (file("../../root/.ssh/authorized_keys")[0], "without '..'"),
        (file("a/../../b")[0], "without '..'"),
        (special("link", tarfile.SYMTYPE, "/etc/shadow"), "not a regular file"),
        (special("hard", tarfile.LNKTYPE, "/etc/shadow"), "not a regular file"),
        (special("dev", tarfile.CHRTYPE), "not a regular file"),
        (special("fifo", tarfile.FIFOTYPE), "not a regular file"),
    ],
)
def test_paths_out_of_the_tree_links_and_devices_are_refused(
    member: tarfile.TarInfo, message: str
) -> None:
    data = archive(member, data={member.name: b"x"} if member.isfile() else None)
    with pytest.raises(InvalidRequest, match=message):
        check_workdir(digest(data), data, max_unpacked_bytes=LIMIT)


def test_an_archive_that_unpacks_past_the_bound_is_refused_before_it_is_unpacked() -> None:
    # A gzip bomb: 64 MiB of zeros compresses to ~64 KiB.
    data = files(zeros=bytes(64 * 2**20))
    assert len(data) < 2**20
    with pytest.raises(InvalidRequest, match="unpacks to more than"):
        check_workdir(digest(data), data, max_unpacked_bytes=LIMIT)


def test_too_many_entries_are_refused() -> None:
    names = {f"f{i}": b"" for i in range(MAX_MEMBERS + 1)}
    data = files(**names)
    with pytest.raises(InvalidRequest, match=f"more than {MAX_MEMBERS}"):
        check_workdir(digest(data), data, max_unpacked_bytes=LIMIT)


@pytest.mark.parametrize(
    "data", [b"", b"not gzip at all", gzip.compress(b"gzip but not a tar" * 100)]
)
def test_what_is_not_a_gzip_tar_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match="not a gzip-compressed tar"):
        check_workdir(digest(data), data, max_unpacked_bytes=LIMIT)
