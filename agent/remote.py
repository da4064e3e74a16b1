"""The API's client for agents' endpoints: a job's log and outputs from the host that has
them. Every request carries the shared secret (TRAINYARD_AGENT_SECRET)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import httpx

from agent.core.errors import TrainyardError
from agent.jobfiles import OutputFile, OutputListing

INTERNAL_PREFIX = "/internal/v1"
CONNECT_SECONDS = 5.0
READ_SECONDS = 60.0  # a follow stream sends a keep-alive well within this


class AgentUnreachable(TrainyardError):
    """The agent that holds this job's files does not answer; try again later."""

    status_code = 503


@dataclass(frozen=True)
class RemoteFile:
    """An open download from an agent: relay its status, headers and body."""

    status_code: int
    headers: dict[str, str]
    body: Iterator[bytes]


class AgentClient:
    def __init__(self, base_url: str, secret: str, *, agent_id: str) -> None:
        self.agent_id = agent_id
        self._client = httpx.Client(
            base_url=base_url.rstrip("/") + INTERNAL_PREFIX,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=httpx.Timeout(READ_SECONDS, connect=CONNECT_SECONDS),
        )

    def close(self) -> None:
        self._client.close()

    def tail(self, job_id: str, lines: int) -> list[str]:
        with self._request("GET", f"/jobs/{job_id}/logs", params={"tail": lines}) as response:
            return response.read().decode("utf-8", "replace").splitlines()

    def follow(
        self, job_id: str, *, from_lines: int, after: str | None
    ) -> Iterator[tuple[str, str]]:
        """(position, line) as the agent's follower yields them; ("", "") is a keep-alive."""
        params: dict[str, str | int] = {"tail": from_lines}
        if after:
            params["after"] = after
        with self._request("GET", f"/jobs/{job_id}/logs/follow", params=params) as response:
            for raw in response.iter_lines():
                position, _, line = raw.partition("\t")
                yield position, line

    def outputs(self, job_id: str) -> OutputListing:
        with self._request("GET", f"/jobs/{job_id}/outputs") as response:
            body = response.read()
        data = httpx.Response(200, content=body).json()
        files = [
            OutputFile(f["path"], int(f["size"]), datetime.fromisoformat(f["modified"]))
            for f in data["files"]
        ]
        return OutputListing(files, bool(data["truncated"]))

    def delete(self, job_id: str) -> None:
        """Remove the job's log and outputs on the agent's host."""
        with self._request("DELETE", f"/jobs/{job_id}/files"):
            pass

    @contextmanager
    def download(self, job_id: str, path: str, *, range_header: str | None) -> Iterator[RemoteFile]:
        headers = {"Range": range_header} if range_header else {}
        url = f"/jobs/{job_id}/outputs/{path}"
        with self._request("GET", url, headers=headers) as response:
            relayed = {
                key: value
                for key, value in response.headers.items()
                if key.lower()
                in (
                    "content-type",
                    "content-length",
                    "content-range",
                    "accept-ranges",
                    "etag",
                    "last-modified",
                    "content-disposition",
                )
            }
            yield RemoteFile(response.status_code, relayed, response.iter_bytes(64 * 1024))

    @contextmanager
    def _request(self, method: str, url: str, **kwargs: object) -> Iterator[httpx.Response]:
        try:
            with self._client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response, self.agent_id)
                yield response
        except httpx.HTTPError as exc:
            raise AgentUnreachable(
                f"agent {self.agent_id}, which holds this job's files, did not answer: {exc}"
            ) from exc


def _error_from(response: httpx.Response, agent_id: str) -> TrainyardError:
    try:
        detail = str(response.json().get("detail", response.text))
    except ValueError:
        detail = response.text
    error = TrainyardError(detail)
    if response.status_code in (401, 403):
        return AgentUnreachable(
            f"agent {agent_id} refused the API's credentials: the API and the agents need the "
            "same TRAINYARD_AGENT_SECRET"
        )
    error.status_code = response.status_code if response.status_code < 500 else 502
    return error
