"""Workdirs on this host: fetched once from the database, unpacked read-only, reused by every
job that names the same digest."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
import threading
from pathlib import Path

from agent.core.errors import ContainerError
from agent.core.workdirs import MAX_MEMBERS, check_workdir
from agent.db.workdirs import WorkdirStore


class WorkdirCache:
    def __init__(self, store: WorkdirStore, directory: Path, *, max_unpacked_bytes: int) -> None:
        self._store = store
        self._dir = directory
        self._max_unpacked = max_unpacked_bytes
        self._lock = threading.Lock()

    def path(self, digest: str) -> Path:
        """The unpacked tree of `digest`, unpacking it first if this host lacks it.
        ContainerError(permanent) when the workdir is gone or its archive is unusable."""
        target = self._dir / digest
        if target.is_dir():
            return target
        with self._lock:  # two jobs with the same workdir unpack it once
            if target.is_dir():
                return target
            data = self._store.get(digest)
            if data is None:
                raise ContainerError(f"workdir {digest} is not in the database", permanent=True)
            try:
                # Checked again here: the agent unpacks as root whatever the database holds.
                check_workdir(digest, data, max_unpacked_bytes=self._max_unpacked)
                self._unpack(data, target)
            except Exception as exc:
                raise ContainerError(f"workdir {digest}: {exc}", permanent=True) from exc
        return target

    def _unpack(self, data: bytes, target: Path) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self._dir))
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                members = archive.getmembers()[:MAX_MEMBERS]
                # The "data" filter refuses links out, devices and absolute paths, and drops
                # owners and special modes: files end up root-owned, readable by the job's user.
                archive.extractall(staging, members=members, filter="data")
            # Readable (not writable) by the job's user, who is not root.
            for root, dirs, files in os.walk(staging):
                os.chmod(root, 0o755)  # noqa: S103
                for name in dirs:
                    os.chmod(os.path.join(root, name), 0o755)  # noqa: S103
                for name in files:
                    full = os.path.join(root, name)
                    mode = os.lstat(full).st_mode
                    os.chmod(full, 0o755 if mode & 0o111 else 0o644)
            os.rename(staging, target)  # whole or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
