"""What this host offers: GPU device ids (nvidia-smi), memory and CPUs."""

from __future__ import annotations

import os
import shutil
import subprocess

from agent.core.scheduling import Capacity


def detect_gpu_ids() -> tuple[str, ...]:
    """GPU indices from nvidia-smi, or none when it is absent or fails."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ()
    try:
        out = subprocess.run(
            [smi, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip().isdigit())


def configured_gpu_ids(setting: str) -> tuple[str, ...]:
    if setting == "auto":
        return detect_gpu_ids()
    if setting in ("none", ""):
        return ()
    return tuple(setting.split(","))


def host_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def local_capacity(
    *, slots: int, gpus_setting: str, memory_reserve_bytes: int, cpus: float | None = None
) -> Capacity:
    return Capacity(
        slots=slots,
        memory_bytes=max(0, host_memory_bytes() - memory_reserve_bytes),
        cpus=float(cpus if cpus is not None else (os.cpu_count() or 1)),
        gpu_ids=configured_gpu_ids(gpus_setting),
    )
