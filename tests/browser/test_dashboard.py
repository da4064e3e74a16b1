"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against a
real `run.py` (API + embedded agent, real Docker, SQLite in a temporary directory): a job
submitted from the form runs to success with its log, curves and outputs on its page; a
running job's page follows it live and cancels it; the agents page shows who holds the GPUs;
with tokens the page asks for one and sends it on every call, the log stream included.

Screenshots go to each test's tmp_path (never the repo)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.e2e.conftest import ROOT, Proc, agent_env, free_port, wait_for

pytestmark = pytest.mark.docker

CHROMIUM = os.environ.get("TRAINYARD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MAX_DOM_LINES = 2000  # api/static/js/logview.js MAX_LINES
WAIT_MS = 45_000  # generous: other tests share this machine's two cores
expect.set_options(timeout=15_000)

# A short training run: a burst of chatter (the log view must batch and cap it), six epochs
# of metrics, a file in /outputs, a last line.
TRAIN = """
import json, sys, time
for i in range(3000):
    print('chatter', i)
sys.stdout.flush()
for e in range(1, 7):
    print(json.dumps({'epoch': e, 'epochs': 6, 'loss': 1 / e, 'accuracy': e / 7}), flush=True)
    time.sleep(0.3)
open('/outputs/model.txt', 'w').write('weights')
print('training done', flush=True)
"""
# Runs until cancelled, printing a point four times a second.
ENDLESS = """
import json, time
step = 0
while True:
    step += 1
    print(json.dumps({'step': step, 'total_steps': 100000, 'loss': 1 / step}), flush=True)
    time.sleep(0.25)
"""


@dataclass
class Service:
    base: str
    env: dict[str, str]

    def submit(self, spec: dict[str, Any], token: str | None = None) -> dict[str, Any]:
        response = httpx.post(f"{self.base}/jobs", json=spec, headers=_bearer(token))
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    def job(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        response = httpx.get(f"{self.base}/jobs/{job_id}", headers=_bearer(token))
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="module")
def start_service(
    tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[Callable[[], Service]]:
    """Start `python run.py` (API + agent, two stand-in GPUs) on a free loopback port; stop
    it at the end and check that its agent left no container behind."""
    started: list[Proc] = []
    agent_ids: list[str] = []

    def start() -> Service:
        tmp = tmp_path_factory.mktemp("dashboard")
        port = free_port()
        env = agent_env(
            tmp,
            f"test-dash-{port}",
            TRAINYARD_PORT=str(port),
            TRAINYARD_HOST="127.0.0.1",
            TRAINYARD_GPUS="0,1",
            TRAINYARD_POLL_INTERVAL="0.2",
            TRAINYARD_MAX_CONCURRENT_JOBS="3",
        )
        proc = Proc([], env, tmp / "server.log")
        started.append(proc)
        agent_ids.append(env["TRAINYARD_AGENT_ID"])
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/health").status_code == 200, what="the service")
        return Service(base, env)

    yield start
    for proc in started:  # SIGTERM: the agent stops and removes its containers
        try:
            proc.stop(signal.SIGTERM, timeout=60)
        except subprocess.TimeoutExpired:
            proc.stop(signal.SIGKILL)
    leaked = []
    for agent_id in agent_ids:
        label = f"trainyard.agent={agent_id}"
        for container in docker_client.api.containers(all=True, filters={"label": label}):
            leaked.append(container["Names"])
            docker_client.api.remove_container(container["Id"], force=True)
    assert not leaked, f"containers left after the dashboard tests: {leaked}"


@pytest.fixture(scope="module")
def service(start_service: Callable[[], Service]) -> Service:
    return start_service()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no browser at {CHROMIUM}: run scripts/ensure-browser.sh (make test does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context; the test fails on any script error or CSP violation."""
    context = browser.new_context(viewport={"width": 1300, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"uncaught: {error}"))

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            problems.append(f"CSP: {message.text}")

    page.on("console", on_console)
    yield page
    context.close()
    assert problems == []


def chart_points(page: Page, chart: str) -> int:
    value = page.get_attribute(f"figure[data-chart={chart}]", "data-points", timeout=1000)
    return int(value or 0)


def wait_points(page: Page, chart: str, at_least: int) -> int:
    page.wait_for_function(
        "([chart, n]) => Number(document.querySelector(`figure[data-chart=${chart}]`)"
        "?.dataset.points || 0) >= n",
        arg=[chart, at_least],
    )
    return chart_points(page, chart)


def test_a_job_submitted_from_the_form_succeeds_with_its_log_curves_and_outputs(
    service: Service, page: Page, tmp_path: Path
) -> None:
    name = '<img src=x onerror="window.pwned=1">resnet-tiny'
    page.goto(f"{service.base}/")
    page.click("a.button.primary")  # "New job"
    page.fill("#f-name", name)
    page.fill("#f-command", json.dumps(["python3", "-c", TRAIN]))
    page.fill("#f-params", '{"lr": 0.1}')
    page.fill("#f-labels", "team=vision\nexample.com/tier=gold")
    page.fill("#f-resources-memory", "lots")
    page.click("button[type=submit]")
    # The service's 422 is shown next to the field it names, and nothing was submitted.
    memory_error = page.locator("[data-error-for='resources.memory']")
    expect(memory_error).to_be_visible()
    expect(memory_error).to_contain_text("'lots' is not a size")
    expect(page.locator("#f-resources-memory")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("[data-error-for='name']")).to_be_hidden()
    assert page.url.endswith("#/submit")
    page.screenshot(path=tmp_path / "form-422.png", full_page=True)

    page.fill("#f-resources-memory", "128m")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r"#/jobs/[0-9a-f]{32}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("main[data-job-status=succeeded]")

    # Job text is shown as text: the name's markup is neither an element nor run.
    expect(page.locator("h1.job-title")).to_have_text(name)
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.pwned") is None
    facts = page.locator("dl.facts")
    expect(facts).to_contain_text("128 MiB memory")
    expect(facts).to_contain_text('{"lr":0.1}')
    expect(facts.locator(".label")).to_have_text(["team=vision", "example.com/tier=gold"])
    expect(page.locator(".attempt[data-attempt='1']")).to_contain_text("succeeded")

    # The log followed the run to its end; the DOM keeps only the newest lines.
    lines = page.locator(".log-lines")
    expect(lines).to_contain_text("training done")
    expect(page.locator(".log-state")).to_have_text("ended: succeeded")
    assert lines.evaluate("el => el.childElementCount") == MAX_DOM_LINES
    assert "chatter 0\n" not in lines.inner_text()

    # Every epoch is a point on the loss and accuracy charts.
    assert wait_points(page, "loss", 6) == 6
    assert wait_points(page, "accuracy", 6) == 6
    expect(page.locator(".latest-metrics")).to_contain_text("loss 0.1667")

    # Outputs download from their link.
    link = page.locator(".outputs a", has_text="model.txt")
    with page.expect_download() as download:
        link.click()
    assert Path(download.value.path()).read_text() == "weights"
    page.screenshot(path=tmp_path / "job-succeeded.png", full_page=True)

    # Rerun makes a new job of the same spec; Delete (after the confirmation) removes it.
    page.click("button[data-action=rerun]")
    page.wait_for_url(re.compile(r"#/jobs/(?!" + job_id + r")[0-9a-f]{32}$"))
    rerun_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("h1.job-title")).to_have_text(name)
    page.wait_for_selector("main[data-job-status=succeeded]")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=delete]")
    page.wait_for_url(re.compile(r"#/$"))
    expect(page.locator(f"tr[data-job-id='{rerun_id}']")).to_have_count(0)
    assert httpx.get(f"{service.base}/jobs/{rerun_id}").status_code == 404

    # The jobs table has the first; search (labels too) and the status filter narrow it.
    row = page.locator(f"tr[data-job-id='{job_id}']")
    expect(row).to_contain_text("succeeded")
    expect(row).to_contain_text("100%")
    expect(row.locator("a")).to_have_text(name)
    page.fill("input[type=search]", "no-such-job")
    expect(row).to_be_hidden()
    page.fill("input[type=search]", "resnet-TINY")
    expect(row).to_be_visible()
    page.fill("input[type=search]", "team=vision")
    expect(row).to_be_visible()
    expect(row.locator(".label").first).to_have_text("team=vision")
    page.click("button.chip[data-status=failed]")
    expect(row).to_have_count(0)
    page.click("button.chip[data-status=all]")
    expect(row).to_be_visible()
    page.screenshot(path=tmp_path / "jobs.png", full_page=True)
    assert service.job(job_id)["status"] == "succeeded"


def test_a_running_job_is_followed_live_shows_on_the_agents_page_and_is_cancelled(
    service: Service, page: Page, tmp_path: Path
) -> None:
    job = service.submit(
        {
            "name": "endless",
            "command": ["python3", "-c", ENDLESS],
            "resources": {"memory": "128m", "gpus": 1},
        }
    )
    page.goto(f"{service.base}/#/jobs/{job['id']}")
    page.wait_for_selector("main[data-job-status=running]")
    expect(page.locator(".log-lines")).to_contain_text('"step": 2')
    # The curve grows while the job trains.
    seen = wait_points(page, "loss", 2)
    assert wait_points(page, "loss", seen + 2) > seen
    assert page.get_attribute("main", "data-job-status") == "running"
    expect(page.locator(".job-progress .bar-label")).to_contain_text("left")  # an ETA
    page.screenshot(path=tmp_path / "job-running.png", full_page=True)

    # The agents page shows the GPU the job holds, and memory as people read it.
    running = service.job(job["id"])
    [gpu] = running["attempts"][0]["gpu_ids"]
    [agent] = httpx.get(f"{service.base}/agents").json()
    page.goto(f"{service.base}/#/agents")
    card = page.locator(f"article[data-agent-id='{agent['id']}']")
    expect(card).to_contain_text("alive")
    held = card.locator(".gpu.held")
    expect(held).to_contain_text(f"GPU {gpu}")
    expect(held.locator("a")).to_have_text(job["id"][:8])
    expect(card.locator(".gpu.free")).to_have_count(1)
    total = agent["memory"]["total_bytes"] / 2**30
    expect(card).to_contain_text(f"of {total:.1f} GiB".replace(".0 GiB", " GiB"))
    expect(card).to_contain_text("1 running of 3 slots")
    page.screenshot(path=tmp_path / "agents.png", full_page=True)

    # Back on the job's page, Cancel (after the confirmation) stops it.
    held.locator("a").click()
    page.wait_for_selector("main[data-job-status=running]")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("button[data-action=cancel]")
    page.wait_for_selector("main[data-job-status=cancelled]")
    expect(page.locator("button[data-action=cancel]")).to_be_hidden()
    expect(page.locator("button[data-action=delete]")).to_be_visible()
    expect(page.locator(".attempt[data-attempt='1'] .badge")).to_have_text("cancelled")
    expect(page.locator(".log-state")).to_have_text("ended: cancelled")
    expect(page.locator("table.events")).to_contain_text("running → cancelled")
    page.screenshot(path=tmp_path / "job-cancelled.png", full_page=True)
    assert service.job(job["id"])["status"] == "cancelled"


def test_with_tokens_the_page_asks_for_one_and_sends_it_on_every_call(
    start_service: Callable[[], Service], page: Page, tmp_path: Path
) -> None:
    service = start_service()  # its own: tokens, once created, are required for good
    created = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "token", "create", "--user", "ops", "--admin"],
        env={**os.environ, **service.env},
        capture_output=True,
        text=True,
        check=True,
    )
    token = created.stdout.strip()
    assert httpx.get(f"{service.base}/jobs").status_code == 401
    spec = {
        "name": "with-token",
        "command": ["python3", "-c", TRAIN],
        "resources": {"memory": "128m"},
    }
    job = service.submit(spec, token)
    wait_for(lambda: service.job(job["id"], token)["status"] == "succeeded", what="the job")

    page.goto(f"{service.base}/")
    dialog = page.locator("#token-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#banner")).to_contain_text("needs an API token")
    page.fill("#token-input", token)
    page.click("#token-save")
    expect(dialog).to_be_hidden()
    expect(page.locator("#banner")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('trainyard.token')") == token

    # The table, the log stream, the metrics and a download all carry the token.
    page.click(f"tr[data-job-id='{job['id']}'] a")
    expect(page.locator(".log-lines")).to_contain_text("training done")
    expect(page.locator(".log-state")).to_have_text("ended: succeeded")
    assert wait_points(page, "loss", 6) == 6
    with page.expect_download() as download:
        page.locator(".outputs a", has_text="model.txt").click()
    assert Path(download.value.path()).read_text() == "weights"
    page.screenshot(path=tmp_path / "with-token.png", full_page=True)

    # A refused token is said so, and the page asks again.
    page.click("#token-button")
    page.fill("#token-input", "ty_" + "A" * 43)
    page.click("#token-save")
    expect(page.locator("#banner")).to_contain_text("refused the token")
    expect(dialog).to_be_visible()
