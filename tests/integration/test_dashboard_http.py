"""The dashboard's files over HTTP: GET / and /ui/*, their content types and security headers,
public even when tokens are required (they hold no job data), and nothing outside api/static.

The page's behaviour in a real browser is tests/browser/test_dashboard.py."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agent.config import Settings
from agent.wiring import System
from api.app import create_app
from api.routes.dashboard import ASSETS, STATIC

JS_IMPORT = re.compile(r"""^\s*(?:import|export)\b[^;]*?\bfrom\s+["'](\.[^"']+)["']""", re.M)
OWN_SCRIPTS = sorted(p for p in STATIC.rglob("*.js") if "vendor" not in p.parts)


@pytest.fixture
def client(make_settings: Callable[..., Settings], sqlite_url: str) -> Iterator[TestClient]:
    system = System.build(make_settings(database_url=sqlite_url), with_agent=False)
    system.start()
    try:
        with TestClient(create_app(system.settings, system_=system)) as test_client:
            yield test_client
    finally:
        system.close(timeout=10)


def assert_secured(headers: dict[str, str] | object) -> None:
    csp = headers["content-security-policy"]  # type: ignore[index]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no inline script, no eval
    assert directives["style-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    assert headers["x-content-type-options"] == "nosniff"  # type: ignore[index]


def test_the_page_and_its_files_are_served_with_their_types_and_a_strict_policy(
    client: TestClient,
) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert_secured(page.headers)
    assert client.head("/").status_code == 200

    expected = {
        "app.js": "text/javascript; charset=utf-8",
        "js/views/job.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
        "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
        "vendor/uPlot.min.css": "text/css; charset=utf-8",
        "vendor/uPlot.LICENSE": "text/plain; charset=utf-8",
    }
    for name, content_type in expected.items():
        response = client.get(f"/ui/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == content_type, name
        assert_secured(response.headers)
        assert response.content == (STATIC / name).read_bytes()
    assert "MIT License" in client.get("/ui/vendor/uPlot.LICENSE").text


def test_the_page_has_no_inline_script_or_style_and_everything_it_loads_is_served(
    client: TestClient,
) -> None:
    page = _Page()
    page.feed(client.get("/").text)
    assert page.inline == []  # the CSP would block it; the page must not need it
    assert page.scripts == ["ui/vendor/uPlot.iife.min.js", "ui/app.js"]
    for url in page.scripts + page.styles:
        assert client.get(f"/{url}").status_code == 200, url
    # Every module the app imports is served (a missing one is a blank page in the browser).
    for script in OWN_SCRIPTS:
        for target in JS_IMPORT.findall(script.read_text()):
            resolved = (script.parent / target).resolve().relative_to(STATIC).as_posix()
            assert resolved in ASSETS, f"{script.name} imports {target}: not served"
    # Every shipped file is served: a file type the route does not know would be a silent 404.
    shipped = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert shipped == set(ASSETS)


def test_job_text_only_reaches_the_page_as_text() -> None:
    """The page builds its DOM with textContent; markup APIs would turn a job name or a log
    line into elements."""
    markup = re.compile(r"\.(?:inner|outer)HTML\b|insertAdjacentHTML|document\.write|\beval\(")
    offenders = [
        f"{script.relative_to(STATIC)}:{number}"
        for script in OWN_SCRIPTS
        for number, line in enumerate(script.read_text().splitlines(), 1)
        if markup.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize(
    "path",
    [
        "/ui/nope.js",
        "/ui/",
        "/ui/%2e%2e/routes/dashboard.py",
        "/ui/..%2f..%2fpyproject.toml",
        "/ui/js/../../../pyproject.toml",
        "/ui/index.html/x",
        "/ui//etc/passwd",
        "/ui/" + "a" * 300,
    ],
)
def test_only_the_shipped_files_are_served(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422), path
    assert "root:" not in response.text and "[project]" not in response.text


def test_the_files_are_public_while_the_api_needs_a_token(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    token = service.tokens.create("alice")[1]
    assert client.get("/jobs").status_code == 401
    assert client.get("/").status_code == 200
    assert client.get("/ui/app.js").status_code == 200
    assert client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_a_foreign_host_name_gets_no_page(client: TestClient) -> None:
    response = client.get("/", headers={"Host": "evil.example"})
    assert response.status_code == 400
    assert "<html" not in response.text


class _Page(HTMLParser):
    """The scripts and stylesheets a page loads, and anything inline."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self._in_script = True
            if values.get("src"):
                self.scripts.append(str(values["src"]))
            else:
                self.inline.append("<script> without src")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "link" and values.get("rel") == "stylesheet":
            self.styles.append(str(values["href"]))
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.inline.append(f"{tag} {name}=")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"script body {data.strip()[:40]!r}")


def test_package_data_ships_the_static_files() -> None:
    """pyproject's package-data globs match every file under api/static (what a wheel holds)."""
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["api"]
    package = root / "api"
    matched = {p for pattern in globs for p in package.glob(pattern) if p.is_file()}
    assert {p for p in STATIC.rglob("*") if p.is_file()} <= matched
