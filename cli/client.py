"""The HTTP client: one place that knows the base URL, the token, and how to turn every failure
(an API error, a service that is not there) into one readable line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from cli.errors import CliError

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=None)  # a followed log may be quiet
MAX_MESSAGE_CHARS = 1000
"""An error line is cut here: a hostile or broken server cannot flood the terminal."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Text from the server made safe to print on one line: no control characters (no
    terminal escapes), whitespace collapsed, at most `limit` characters."""
    flat = _SPACES.sub(" ", _CONTROL.sub("?", text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_url(url: str) -> str:
    """The API's base URL without a trailing slash; CliError for anything but http(s)://host."""
    shown = one_line(url, 80)
    try:
        parsed = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError) as exc:
        raise CliError(f"TRAINYARD_URL {shown!r} is not a URL ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise CliError(f"TRAINYARD_URL {shown!r} must look like http://127.0.0.1:8000")
    if parsed.query or parsed.fragment:
        raise CliError(f"TRAINYARD_URL {shown!r} must not have a query or fragment")
    return str(parsed).rstrip("/")


def check_token(token: str | None) -> str | None:
    if not token:
        return None
    token = token.strip()
    if not token.isascii() or not token.isprintable() or " " in token:
        raise CliError(
            "TRAINYARD_TOKEN must be one word of printable ASCII (as `token create` prints it)"
        )
    return token


def error_message(response: httpx.Response) -> str:
    """An API error as one line: FastAPI's 422 body {"detail": [{"loc", "msg", "type"}]} names
    each field and what to change; other errors are {"detail": "..."}."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list) and detail:
        problems = [_problem(item) for item in detail]
        text = f"the API refused the request ({status}): " + "; ".join(problems)
    elif isinstance(detail, str) and detail.strip():
        text = f"{detail} ({status})"
    else:
        text = f"the API answered {status} {response.reason_phrase}".rstrip()
    if status == 401:
        text += "; set TRAINYARD_TOKEN to a token from `python run.py token create --user NAME`"
    return one_line(text)


def api_error(response: httpx.Response) -> CliError:
    return CliError(error_message(response), transient=response.status_code >= 500)


def _problem(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    field = item.get("field")
    if not isinstance(field, str) or not field:
        loc = item.get("loc")
        parts = [str(p) for p in loc] if isinstance(loc, list) else []
        if parts and parts[0] in ("body", "query", "path", "header"):
            parts = parts[1:]
        field = ".".join(parts) or "request"
    return f"{field}: {item.get('msg', 'invalid')}"


class Api:
    """The Trainyard API at `url`, with `token` sent as a Bearer token when given."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = check_url(url)
        headers = {"User-Agent": "trainyard-cli"}
        token = check_token(token)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        self.client.close()

    def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response whatever its status; CliError when there is none."""
        try:
            return self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response when its status is below 400; CliError (one line) otherwise."""
        response = self.send(method, path, **kwargs)
        if response.status_code >= 400:
            raise api_error(response)
        return response

    def get(self, path: str, params: Any = None) -> Any:
        return self.decode(self.request("GET", path, params=params))

    def post(self, path: str, json: Any = None) -> Any:
        return self.decode(self.request("POST", path, json=json))

    def decode(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"the API at {self.url} answered {response.request.method} "
                f"{response.request.url.path} with something that is not JSON; is TRAINYARD_URL "
                "the Trainyard API?"
            ) from None

    def exists(self, path: str) -> bool:
        """HEAD `path`: True for 200, False for 404, CliError for anything else."""
        response = self.send("HEAD", path)
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise api_error(response)
        return True

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response with no read timeout; errors as in `request`."""
        try:
            with self.client.stream(method, path, timeout=STREAM_TIMEOUT, **kwargs) as response:
                if response.status_code >= 400:
                    response.read()
                    raise api_error(response)
                yield response
        except httpx.HTTPError as exc:
            raise self.transport_error(exc) from None

    def transport_error(self, exc: httpx.HTTPError) -> CliError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return CliError(
                f"cannot reach the Trainyard API at {self.url} ({one_line(str(exc), 200)}); "
                "is it running? Set TRAINYARD_URL to where it listens",
                transient=True,
            )
        if isinstance(exc, httpx.TimeoutException):
            return CliError(
                f"the Trainyard API at {self.url} did not answer in time", transient=True
            )
        return CliError(
            f"talking to the Trainyard API at {self.url} failed: {one_line(str(exc), 200)}",
            transient=True,
        )
