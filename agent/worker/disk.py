"""How much disk a job's files take on this host."""

from __future__ import annotations

import os
from pathlib import Path


def directory_bytes(path: Path) -> int:
    """Bytes allocated to the files under `path` (blocks, not apparent sizes: a sparse file
    costs what it really takes). Links are not followed; a file gone mid-walk is skipped."""
    total = 0
    for root, _dirs, names in os.walk(path, followlinks=False):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                continue
    return total
