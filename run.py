"""Trainyard entry point.

python run.py            API on TRAINYARD_HOST:TRAINYARD_PORT with an embedded agent
python run.py api        API only (agents run elsewhere against the same database)
python run.py agent      agent only
python run.py migrate    apply database migrations and exit
python run.py token create --user NAME [--admin] | list | revoke ID_OR_PREFIX
                         API tokens (the secret is printed once; only its hash is stored)

Stopping: SIGTERM or SIGINT stops the agent's containers and requeues their jobs, unless
TRAINYARD_DETACH_ON_STOP=true; SIGUSR1 always stops in detach mode (for upgrades): running
containers are left alone and the next agent with the same TRAINYARD_AGENT_ID re-attaches them.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from datetime import datetime
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError
from uvicorn.supervisors.multiprocess import Multiprocess

from agent.config import LOOPBACK_HOSTS, Settings
from agent.core.auth import UnsafeBind, bind_refusal
from agent.core.errors import TrainyardError
from agent.db.engine import Database
from agent.db.migrate import upgrade
from agent.db.tokens import TokenStore
from agent.wiring import DETACH_REQUESTED, System
from api.app import create_app

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    parser = argparse.ArgumentParser(description="Trainyard training-job orchestrator")
    parser.add_argument(
        "command", nargs="?", default="all", choices=["all", "api", "agent", "migrate"]
    )
    args = parser.parse_args(argv)
    settings = load_settings(mode=args.command if args.command != "migrate" else "all")
    if settings is None:
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    try:
        if args.command == "migrate":
            upgrade(settings.resolved_database_url)
            logging.getLogger("trainyard").info("database is at the latest migration")
            return 0
        if args.command == "agent":
            return run_agent(settings)
        check_bind(settings)
        return run_api(settings)
    except TrainyardError as exc:
        logging.getLogger("trainyard").error("%s", exc)
        return 1


def load_settings(**values: Any) -> Settings | None:
    """The settings, or None after printing one clear line per problem (not a traceback)."""
    try:
        return Settings(**values)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            where = f"TRAINYARD_{field.upper()}: " if field else ""
            print(f"trainyard: configuration error: {where}{error['msg']}", file=sys.stderr)
        return None


def check_bind(settings: Settings) -> None:
    """Beyond loopback the API needs a token to exist: refuse here with one clear line
    (create_app checks again, for servers started another way)."""
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        exist = TokenStore(db).any()
    finally:
        db.dispose()
    refusal = bind_refusal(settings.host, LOOPBACK_HOSTS, tokens_exist=exist)
    if refusal is not None:
        raise UnsafeBind(refusal)


def token_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run.py token", description="API tokens")
    commands = parser.add_subparsers(dest="action", required=True)
    create = commands.add_parser("create", help="create a token; it is printed once")
    create.add_argument("--user", required=True, help="who the token acts as (owns jobs)")
    create.add_argument("--admin", action="store_true", help="sees and cancels every job")
    commands.add_parser("list", help="every token, without secrets")
    revoke = commands.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("token", metavar="TOKEN_ID_OR_PREFIX")
    args = parser.parse_args(argv)
    settings = load_settings()
    if settings is None:
        return 2
    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    try:
        upgrade(settings.resolved_database_url)
        db = Database(settings.resolved_database_url)
        try:
            return _token_command(TokenStore(db), args)
        finally:
            db.dispose()
    except TrainyardError as exc:
        print(f"trainyard: {exc}", file=sys.stderr)
        return 1


def _token_command(store: TokenStore, args: argparse.Namespace) -> int:
    if args.action == "create":
        info, secret = store.create(args.user, admin=args.admin)
        role = "admin" if info.admin else "user"
        print(secret)  # stdout holds the secret alone, for TOKEN=$(python run.py token create ...)
        print(
            f"token {info.id} for {role} {info.user!r} created; it is shown only this once",
            file=sys.stderr,
        )
    elif args.action == "list":
        print(f"{'ID':<14}{'USER':<24}{'ROLE':<7}{'TOKEN':<14}{'CREATED':<22}REVOKED")
        for token in store.list():
            print(
                f"{token.id:<14}{token.user:<24}{'admin' if token.admin else 'user':<7}"
                f"{token.prefix + '…':<14}{_when(token.created_at):<22}"
                f"{_when(token.revoked_at) if token.revoked_at else '-'}"
            )
    else:
        info, was_active = store.revoke(args.token)
        state = "revoked" if was_active else "was already revoked"
        print(f"token {info.id} of {info.user!r} {state}")
    return 0


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%SZ") if at else ""


def run_api(settings: Settings) -> int:
    def detach(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("trainyard").info("signal %d: stopping in detach mode", signum)
        DETACH_REQUESTED.set()
        signal.raise_signal(signal.SIGTERM)  # uvicorn's own graceful shutdown

    signal.signal(signal.SIGUSR1, detach)
    # With several workers uvicorn's supervisor shares the socket with worker processes it
    # (re)starts, each importing the app by name (`check_bind` ran the migrations once here).
    workers = settings.api_workers > 1
    if workers and not hasattr(Multiprocess, "handle_usr1"):
        # The supervisor takes over every signal and ignores SIGUSR1; the upgrade signal
        # stops it gracefully, like a single process (an API has nothing to detach).
        Multiprocess.handle_usr1 = Multiprocess.handle_term  # type: ignore[attr-defined]
    uvicorn.run(
        "api.app:api_worker_app" if workers else create_app(settings),
        factory=workers,
        workers=settings.api_workers if workers else None,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.stop_grace_seconds) + 15,
    )
    return 0


def run_agent(settings: Settings) -> int:
    system = System.build(settings, with_agent=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            DETACH_REQUESTED.set()
        logging.getLogger("trainyard").info("signal %d: stopping the agent", signum)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(signum, on_signal)
    system.start()
    stop.wait()
    system.close(timeout=settings.stop_grace_seconds + 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
