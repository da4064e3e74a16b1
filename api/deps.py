"""`Annotated` dependency aliases: routes ask for what they need by type.

Dependencies that do no I/O are `async def`: FastAPI runs a plain `def` dependency in a worker
thread, and those hand-offs were a quarter of the API's CPU under load."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from agent.config import Settings
from agent.service import TrainyardService


async def get_service(request: Request) -> TrainyardService:
    service: TrainyardService = request.app.state.service
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ServiceDep = Annotated[TrainyardService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
