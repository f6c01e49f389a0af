"""The dashboard in a real browser: a real `winback serve` (uvicorn) on a loopback port, over a small
simulated shop with a holdout and its decision log, driven by Debian's headless Chromium through
Playwright. Screenshots go to ``WINBACK_TEST_ARTIFACTS`` (default ``.test-artifacts/``) under
``dashboard/``.

Each browser test signs in through the form and checks that nothing on the page failed: no console
error, no uncaught exception, no failed or refused request, and no request that left loopback.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import httpx2 as httpx
import pyarrow as pa
import pytest

from winback.config import Settings, load_settings
from winback.errors import WinbackError
from winback.events.store import EventStore
from winback.serve.db import state_engine
from winback.serve.keys import create_key, revoke

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PHONE = {"width": 390, "height": 844}
WIDE = {"width": 1280, "height": 900}
#: Section pages whose charts are checked, with the plot types each must draw.
CHARTS = {"kpis": ("funnel", "scatter", "heatmap"), "holdout": ("bar",), "demand": ("bar",)}


@dataclass
class Service:
    url: str
    settings: Settings
    read_key: str
    write_key: str
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots are kept: ``WINBACK_TEST_ARTIFACTS`` or ``.test-artifacts/`` of the checkout."""
    root = Path(os.environ.get("WINBACK_TEST_ARTIFACTS") or ROOT / ".test-artifacts")
    path = root / "dashboard"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")  # stopped with this module: no server outlives its tests
def service(measured_shop: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`winback serve` on a free loopback port over a copy of the measured shop (tests add to it), with
    a read and a write key, checking for new data every second."""
    home = tmp_path_factory.mktemp("dashboard") / "home"
    home.mkdir()
    for name in ("events.duckdb", "decisions.duckdb"):
        shutil.copy(measured_shop.home / name, home / name)
    settings = load_settings(home=home)
    with state_engine(settings) as engine:
        read_key, _ = create_key(engine, "read", "dashboard test")
        write_key, _ = create_key(engine, "write", "dashboard test")
    port = _free_port()
    log = home.parent / "serve.log"
    env = {
        **os.environ,
        "WINBACK_HOME": str(home),
        "WINBACK_DASHBOARD_REFRESH_SECONDS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    env.pop("WINBACK_DATABASE_URL", None)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "winback.cli", "serve", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    found = Service(url, settings, read_key, write_key, log, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, f"winback serve exited: {found.output()}"
            assert time.monotonic() < deadline, f"winback serve was not ready in 60 s: {found.output()}"
            time.sleep(0.2)
        yield found
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's, or ``WINBACK_CHROMIUM``) under Playwright; one for this module. A
    browser that cannot start fails the tests with what is missing."""
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError as error:
        pytest.fail(f"playwright is not installed ({error}): pip install -e '.[dev]'")
    executable = os.environ.get("WINBACK_CHROMIUM") or "/usr/bin/chromium"
    if not Path(executable).exists() and shutil.which(executable) is None:
        pytest.fail(
            f"Chromium is missing: no browser at {executable}; install Debian's chromium (`make browser`, "
            "i.e. apt-get install chromium) or point WINBACK_CHROMIUM at a Chromium executable"
        )
    playwright = sync_playwright().start()
    try:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    except Error as error:
        playwright.stop()
        pytest.fail(f"Chromium at {executable} did not start under Playwright: {error}")
    yield launched
    launched.close()
    playwright.stop()


@dataclass
class Watched:
    """A browser page with everything that went wrong on it, and every host it asked."""

    page: Any
    problems: list[str] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)

    def clean(self) -> None:
        assert not self.problems, self.problems
        assert self.hosts <= {"127.0.0.1"}, self.hosts


def _cut_off(request: Any) -> bool:
    """A section's refresh that was in flight when the browser left the page (the browser aborts it)."""
    return "/dashboard/fragments/" in request.url and request.failure == "net::ERR_ABORTED"


@pytest.fixture
def open_page(browser: Any, service: Service) -> Iterator[Callable[..., Watched]]:
    """Open pages in fresh browser contexts (closed after the test), watched for problems."""
    contexts: list[Any] = []

    def make(viewport: dict[str, int] = WIDE) -> Watched:
        context = browser.new_context(viewport=viewport, base_url=service.url)
        contexts.append(context)
        page = context.new_page()
        watched = Watched(page)
        page.on("console", lambda m: m.type == "error" and watched.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: watched.problems.append(f"page error: {e}"))
        page.on(
            "requestfailed", lambda r: _cut_off(r) or watched.problems.append(f"failed: {r.url} {r.failure}")
        )
        page.on(
            "response",
            lambda r: r.status >= 400 and watched.problems.append(f"HTTP {r.status}: {r.url}"),
        )
        page.on("request", lambda r: watched.hosts.add(urlsplit(r.url).hostname or r.url))
        return watched

    yield make
    for context in contexts:
        context.close()


def _sign_in(watched: Watched, service: Service, path: str = "/dashboard") -> None:
    page = watched.page
    page.goto(path)
    assert urlsplit(page.url).path == "/dashboard/login"
    page.fill("#key", service.read_key)
    page.click("form[action='/dashboard/login'] button")
    page.wait_for_url(f"**{path}*")


def _ready(page: Any) -> None:
    """Wait until the page's section shows its computed figures (the script swaps them in)."""
    page.wait_for_selector('.fragment[data-state="ready"]', timeout=60_000)


def _tile(page: Any, label: str) -> int:
    text = page.evaluate(
        """label => [...document.querySelectorAll('.tile')]
            .find(t => t.querySelector('.label').textContent === label)
            .querySelector('.value').textContent""",
        label,
    )
    return int(text.replace(",", ""))


def _charts(page: Any) -> list[dict[str, Any]]:
    """Each plotly chart's trace types, the points plotly computed per trace, its SVG traces and the
    marks drawn in them."""
    return list(
        page.evaluate(
            """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(p => ({
                types: (p.data || []).map(t => t.type || 'scatter'),
                points: (p.calcdata || []).map(trace => trace[0] && trace[0].z
                  ? trace[0].z.flat().filter(v => v !== null).length : trace.length),
                traces: p.querySelectorAll('g.trace, g.hm').length,
                marks: p.querySelectorAll(
                  'g.trace path.point, g.trace .point path, g.trace path.js-line, g.hm image').length,
                width: p.getBoundingClientRect().width,
            }))"""
        )
    )


def _no_horizontal_overflow(page: Any) -> None:
    width, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page is {width} px wide in a {inner} px viewport"


def test_a_page_without_login_goes_to_the_login_form(open_page: Callable[..., Watched]) -> None:
    watched = open_page()
    page = watched.page
    page.goto("/dashboard/holdout?channel=email")
    assert urlsplit(page.url).path == "/dashboard/login"
    assert parse_qs(urlsplit(page.url).query)["next"] == ["/dashboard/holdout?channel=email"]
    assert page.locator("#key").get_attribute("type") == "password"
    watched.clean()


def test_a_wrong_key_is_refused_in_words_and_logged_without_it(
    open_page: Callable[..., Watched], service: Service
) -> None:
    page = open_page().page
    page.goto("/dashboard/login")
    wrong = "wbk_0123456789abcdef_not-the-secret-at-all"
    page.fill("#key", wrong)
    with page.expect_response("**/dashboard/login") as answer:
        page.click("form[action='/dashboard/login'] button")
    assert answer.value.status == 401
    assert "That key is not valid" in page.locator("[role=alert]").inner_text()
    assert not page.context.cookies()
    time.sleep(0.2)
    output = service.output()
    assert "refused dashboard sign-in: invalid API key" in output
    assert wrong not in output
    assert "not-the-secret" not in output


@pytest.mark.slow
def test_the_dashboard_in_a_browser(
    open_page: Callable[..., Watched], service: Service, artifacts: Path
) -> None:
    watched = open_page()
    page = watched.page
    _sign_in(watched, service, "/dashboard/kpis")
    cookie = next(c for c in page.context.cookies() if c["name"] == "winback_dashboard")
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert service.read_key not in cookie["value"]
    for name, types in CHARTS.items():
        page.goto(f"/dashboard/{name}")
        _ready(page)
        page.wait_for_selector(".js-plotly-plot .main-svg")
        charts = _charts(page)
        drawn = {t for chart in charts for t in chart["types"]}
        assert set(types) <= drawn, (name, charts)
        for chart in charts:
            assert chart["traces"] > 0, (name, chart)
            assert chart["marks"] > 0, (name, chart)
            assert max(chart["points"]) > 0, (name, chart)
        page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
    for name in ("policies", "segments", "at-risk", "model-health"):
        page.goto(f"/dashboard/{name}")
        _ready(page)
        page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
    page.goto("/dashboard")
    _ready(page)
    assert "margin that would otherwise have been" in page.inner_text(".fragment")
    assert page.locator("nav.pages a[aria-current=page]").inner_text() == "Overview"
    page.screenshot(path=str(artifacts / "overview.png"), full_page=True)
    watched.clean()


@pytest.mark.slow
def test_filters_change_what_is_shown(open_page: Callable[..., Watched], service: Service) -> None:
    watched = open_page()
    page = watched.page
    _sign_in(watched, service)
    _ready(page)
    carts, decisions = _tile(page, "carts"), _tile(page, "decisions measured")
    page.select_option("select[name=channel]", "email")
    page.click("form.filters button")
    page.wait_for_url("**channel=email*")
    _ready(page)
    assert "channel email" in page.inner_text("header")
    assert _tile(page, "decisions measured") < decisions
    assert _tile(page, "carts") == carts  # the channel filters decisions, not the shop's carts
    page.fill("input[name=since]", "2024-02-01")
    page.click("form.filters button")
    page.wait_for_url("**since=2024-02-01*")
    _ready(page)
    assert page.inner_text("header .note").startswith("2024-02-01 to ")
    assert _tile(page, "carts") < carts
    page.click("nav.pages >> text=Holdout comparison")  # the page links keep the filters
    assert parse_qs(urlsplit(page.url).query) == {"since": ["2024-02-01"], "channel": ["email"]}
    _ready(page)
    # a browser without date inputs could send anything
    page.evaluate("document.querySelector('input[name=since]').type = 'text'")
    page.fill("input[name=since]", "last tuesday")
    with page.expect_response(lambda r: "since=last" in r.url) as answer:
        page.click("form.filters button")
    assert answer.value.status == 400
    assert "expected a date" in page.inner_text(".error")
    watched.problems = [p for p in watched.problems if "HTTP 400" not in p and "status of 400" not in p]
    watched.clean()


@pytest.mark.slow
def test_a_phone_screen_has_no_horizontal_overflow(
    open_page: Callable[..., Watched], service: Service, artifacts: Path
) -> None:
    watched = open_page(PHONE)
    page = watched.page
    _sign_in(watched, service)
    _no_horizontal_overflow(page)
    for name in ("", "/kpis", "/holdout", "/demand"):
        page.goto(f"/dashboard{name}")
        _ready(page)
        page.wait_for_timeout(300)  # the charts size themselves to the screen
        _no_horizontal_overflow(page)
        assert all(chart["width"] <= PHONE["width"] for chart in _charts(page))
        page.screenshot(path=str(artifacts / f"phone-{name.strip('/') or 'overview'}.png"), full_page=True)
    watched.clean()


def test_sign_out_ends_the_session(open_page: Callable[..., Watched], service: Service) -> None:
    watched = open_page()
    page = watched.page
    _sign_in(watched, service)
    page.click("form.logout button")
    page.wait_for_url("**/dashboard/login?signed_out=1")
    assert "Signed out" in page.inner_text("main")
    page.goto("/dashboard")
    assert urlsplit(page.url).path == "/dashboard/login"
    watched.clean()


def test_scripts_read_with_a_bearer_key_and_forged_forms_are_refused(service: Service) -> None:
    fragment = f"{service.url}/dashboard/fragments/summary"
    for key in (service.read_key, service.write_key):
        reply = httpx.get(fragment, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert reply.status_code in (200, 202), reply.text
        assert 'class="fragment"' in reply.text
        assert reply.headers["cache-control"] == "no-store"
    assert httpx.get(fragment, timeout=30).status_code == 401
    refused = httpx.get(fragment, headers={"Authorization": "Bearer wbk_x_y"}, timeout=30)
    assert refused.status_code == 401
    page = httpx.get(f"{service.url}/dashboard", headers={"Authorization": f"Bearer {service.read_key}"})
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # a login form posted from another site (login CSRF) or with no origin at all
    for origin in ({"Origin": "http://evil.example"}, {}):
        forged = httpx.post(
            f"{service.url}/dashboard/login", data={"key": service.read_key}, headers=origin, timeout=30
        )
        assert forged.status_code == 403
        assert "set-cookie" not in forged.headers
    signed = httpx.post(
        f"{service.url}/dashboard/login",
        data={"key": service.read_key, "next": "https://evil.example/"},
        headers={"Origin": service.url},
        timeout=30,
    )
    assert signed.status_code == 303
    assert signed.headers["location"] == "/dashboard"  # never to another site
    assert "HttpOnly" in signed.headers["set-cookie"]
    assert "SameSite=strict" in signed.headers["set-cookie"]
    session = signed.cookies["winback_dashboard"]
    assert httpx.get(f"{service.url}/dashboard", cookies={"winback_dashboard": session}).status_code == 200
    tampered = session[:-2] + ("AA" if not session.endswith("AA") else "BB")
    assert httpx.get(f"{service.url}/dashboard", cookies={"winback_dashboard": tampered}).status_code == 303
    plotly = httpx.get(f"{service.url}/dashboard/static/plotly.min.js", headers={"Accept-Encoding": "gzip"})
    assert plotly.status_code == 200
    assert "immutable" in plotly.headers["cache-control"]
    assert plotly.headers["content-encoding"] == "gzip"
    assert "plotly" in plotly.text[:2000].lower()
    etag = plotly.headers["etag"]
    again = httpx.get(f"{service.url}/dashboard/static/plotly.min.js", headers={"If-None-Match": etag})
    assert again.status_code == 304


def test_revoking_the_key_ends_its_sessions(service: Service) -> None:
    with state_engine(service.settings, migrate=False) as engine:
        token, key = create_key(engine, "read", "soon revoked")
        signed = httpx.post(
            f"{service.url}/dashboard/login", data={"key": token}, headers={"Origin": service.url}, timeout=30
        )
        cookies = {"winback_dashboard": signed.cookies["winback_dashboard"]}
        assert httpx.get(f"{service.url}/dashboard", cookies=cookies, timeout=30).status_code == 200
        assert revoke(engine, key.key_id)
    gone = httpx.get(f"{service.url}/dashboard/kpis", cookies=cookies, timeout=30)
    assert gone.status_code == 303
    assert gone.headers["location"] == "/dashboard/login?next=%2Fdashboard%2Fkpis"


def _poll(url: str, key: str, until: Callable[[httpx.Response], bool], seconds: float = 60) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        reply = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        if until(reply) or time.monotonic() > deadline:
            return reply
        time.sleep(0.3)


def _hold(path: Path, seconds: float = 60) -> duckdb.DuckDBPyConnection:
    """Open ``path`` for writing as `winback ingest` would (waiting while the dashboard reads it)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("held", ["events.duckdb", "decisions.duckdb"])
def test_a_writer_holding_the_data_is_said_in_words(service: Service, held: str) -> None:
    url = f"{service.url}/dashboard/fragments/summary?since=2024-01-{10 + len(held)}"
    writer = _hold(service.settings.home / held)
    try:
        busy = _poll(url, service.read_key, lambda r: r.status_code != 202)
        assert busy.status_code == 503, busy.text
        assert "being written by another process" in busy.text
        assert busy.headers["retry-after"] == "5"
        page = httpx.get(
            url.replace("/fragments/summary", ""), headers={"Authorization": f"Bearer {service.read_key}"}
        )
        assert page.status_code == 503
        assert "being written by another process" in page.text
    finally:
        writer.close()
    done = _poll(url, service.read_key, lambda r: r.status_code == 200)
    assert done.status_code == 200, done.text
    assert "margin that would otherwise have been" in done.text


@pytest.mark.slow
def test_the_page_updates_as_data_arrives(open_page: Callable[..., Watched], service: Service) -> None:
    watched = open_page()
    page = watched.page
    _sign_in(watched, service)
    _ready(page)
    carts = _tile(page, "carts")
    version = page.get_attribute(".fragment", "data-version")
    with EventStore(service.settings, read_only=True) as store:
        row = store.con.execute("SELECT max(timestamp) FROM event_log").fetchone()
    assert row is not None
    last = row[0]
    new_cart = pa.table(
        {
            "event_id": ["dash-live-1"],
            "event_type": ["add_to_cart"],
            "timestamp": pa.array([last], pa.timestamp("us", tz="UTC")),
            "user_id": ["u-dashboard-live"],
            "session_id": ["s-dashboard-live"],
            "product_id": ["p00001"],
            "price": [25.0],
            "quantity": pa.array([1], pa.int32()),
        }
    )
    deadline = time.monotonic() + 60
    while True:  # as a writer would, wait while the dashboard reads the store
        try:
            store = EventStore(service.settings)
            break
        except WinbackError:
            assert time.monotonic() < deadline, "the dashboard held the event store for a minute"
            time.sleep(0.2)
    with store:
        assert store.append(new_cart, source="test").total("ingested") == 1
    page.wait_for_function(  # without reloading the page: its script swaps the new figures in
        """carts => [...document.querySelectorAll('.fragment[data-state=ready] .tile')]
            .some(t => t.querySelector('.label').textContent === 'carts'
                       && t.querySelector('.value').textContent !== carts)""",
        arg=f"{carts:,}",
        timeout=60_000,
    )
    assert _tile(page, "carts") == carts + 1
    assert page.get_attribute(".fragment", "data-version") != version
    watched.clean()


def test_a_home_without_events_is_said_in_words(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from winback.serve.main import create_app

    settings = load_settings(home=tmp_path / "home")
    with TestClient(create_app(settings)) as client:
        key, _ = create_key(client.app.state.winback.engine, "read")  # type: ignore[attr-defined]
        auth = {"Authorization": f"Bearer {key}"}
        reply = _poll_client(client, "/dashboard/fragments/kpis", auth)
        assert reply.status_code == 200
        assert "no event store at" in reply.text
        assert "winback ingest" in reply.text
        page = client.get("/dashboard", headers=auth)
        assert page.status_code == 200
        assert "no event store at" in page.text
        assert client.get("/dashboard/nothing", headers=auth).status_code == 404
        assert client.get("/dashboard/fragments/nothing", headers=auth).status_code == 404
        assert client.get("/dashboard/static/secrets.txt").status_code == 404


def _poll_client(client: Any, path: str, headers: dict[str, str]) -> Any:
    deadline = time.monotonic() + 30
    while True:
        reply = client.get(path, headers=headers)
        if reply.status_code != 202 or time.monotonic() > deadline:
            return reply
        time.sleep(0.1)
