"""Which files of a workdir stay home: `.gitignore` and `.trainyardignore` rules, read in every
directory and applied as git does (a deeper file's rules, and a later one's, win)."""

from __future__ import annotations

from pathlib import Path

import pathspec

from cli.errors import CliError

IGNORE_FILES = (".gitignore", ".trainyardignore")
"""Read in this order in each directory, so `.trainyardignore` can re-include (`!name`) what
`.gitignore` leaves out, or leave out more."""
MAX_IGNORE_FILE_BYTES = 1024 * 1024


class IgnoreRules:
    """The rules of each directory loaded so far, keyed by its path relative to the root
    ('' for the root itself, POSIX separators)."""

    def __init__(self) -> None:
        self._specs: dict[str, pathspec.GitIgnoreSpec] = {}

    def load(self, directory: Path, rel: str) -> None:
        lines: list[str] = []
        for name in IGNORE_FILES:
            path = directory / name
            if not path.is_file() or path.is_symlink():
                continue
            try:
                with path.open("rb") as handle:
                    raw = handle.read(MAX_IGNORE_FILE_BYTES + 1)
            except OSError as exc:
                raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
            if len(raw) > MAX_IGNORE_FILE_BYTES:
                raise CliError(f"{path} is larger than {MAX_IGNORE_FILE_BYTES // 1024} KiB")
            lines += raw.decode("utf-8", "replace").splitlines()
        if not lines:
            return
        try:
            self._specs[rel] = pathspec.GitIgnoreSpec.from_lines(lines)
        except (ValueError, TypeError) as exc:
            raise CliError(f"bad pattern in an ignore file of {directory}: {exc}") from None

    def ignored(self, rel: str, *, is_dir: bool) -> bool:
        """Whether `rel` (relative to the root) is left out. Directories are asked with a
        trailing slash so that `build/` patterns match them."""
        decision = False
        parts = rel.split("/")
        for depth in range(len(parts)):  # the root's rules first, the nearest directory's last
            base = "/".join(parts[:depth])
            spec = self._specs.get(base)
            if spec is None:
                continue
            sub = "/".join(parts[depth:]) + ("/" if is_dir else "")
            result = spec.check_file(sub).include
            if result is not None:
                decision = result
        return decision
