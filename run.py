"""Trainyard entry point.

python run.py            API on TRAINYARD_HOST:TRAINYARD_PORT with an embedded agent
python run.py api        API only (agents run elsewhere against the same database)
python run.py agent      agent only
python run.py migrate    apply database migrations and exit

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
from types import FrameType

import uvicorn
from pydantic import ValidationError

from agent.config import Settings
from agent.core.errors import TrainyardError
from agent.db.migrate import upgrade
from agent.wiring import DETACH_REQUESTED, System
from api.app import create_app

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Trainyard training-job orchestrator")
    parser.add_argument(
        "command", nargs="?", default="all", choices=["all", "api", "agent", "migrate"]
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings(mode=args.command if args.command != "migrate" else "all")
    except ValidationError as exc:
        # One clear line per problem, not a traceback: the message says what to change.
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            where = f"TRAINYARD_{field.upper()}: " if field else ""
            print(f"trainyard: configuration error: {where}{error['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    try:
        if args.command == "migrate":
            upgrade(settings.resolved_database_url)
            logging.getLogger("trainyard").info("database is at the latest migration")
            return 0
        if args.command == "agent":
            return run_agent(settings)
        return run_api(settings)
    except TrainyardError as exc:
        logging.getLogger("trainyard").error("%s", exc)
        return 1


def run_api(settings: Settings) -> int:
    def detach(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("trainyard").info("signal %d: stopping in detach mode", signum)
        DETACH_REQUESTED.set()
        signal.raise_signal(signal.SIGTERM)  # uvicorn's own graceful shutdown

    signal.signal(signal.SIGUSR1, detach)
    uvicorn.run(
        create_app(settings),
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
