"""Options every command shares (the API's URL and token) and the client built from them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import typer

from cli.client import Api

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON reply instead (for scripts).")
]


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None


def api(ctx: typer.Context) -> Api:
    """A client for the API the root options name (one per command run; closed at exit)."""
    target = ctx.find_root().obj
    assert isinstance(target, Target)
    client = Api(target.url, target.token)
    ctx.call_on_close(client.close)
    return client
