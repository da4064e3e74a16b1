"""The one exception the CLI shows a user: a single line on stderr and a non-zero exit."""

from __future__ import annotations


class CliError(Exception):
    """Something the user can fix (or must know); `message` is the whole line they see."""

    def __init__(self, message: str, exit_code: int = 1, *, transient: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.transient = transient
        """The service was unreachable or failed (5xx): asking again later may work."""
