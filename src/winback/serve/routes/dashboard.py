"""The dashboard: the report's sections as live pages under ``/dashboard``, for a read key or its login.

- ``GET /dashboard``: the overview (the report's summary); ``GET /dashboard/{page}``: one section per
  page (``kpis``, ``holdout``, ``policies``, ``segments``, ``at-risk``, ``model-health``, ``demand``).
  Query parameters ``since``, ``until`` (dates), ``flow`` and ``channel`` filter every page as
  ``winback report``'s options do.
- ``GET /dashboard/fragments/{section}``: one section alone, as the page's script fetches it to refresh
  (204 when nothing changed since ``known``); scripts can read it with ``Authorization: Bearer <key>``.
- ``GET /dashboard/login``, ``POST /dashboard/login`` (a key for a session cookie), ``POST
  /dashboard/logout``; ``GET /dashboard/static/{name}``: plotly.js, the page's script and style, served
  by the service itself (never a CDN), compressed and cached by the browser.

The figures come from :class:`winback.serve.dashboard.Dashboard` (computed in the background, kept
until the data changes); sign-in from :mod:`winback.serve.session`. Every page is ``no-store`` and under
a Content-Security-Policy that lets it load and fetch nothing but this service.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import html
import logging
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment
from markupsafe import Markup

from winback.decide.actions import CHANNELS
from winback.errors import BadInputError
from winback.measure.data import Filters
from winback.measure.report import Section, render_page
from winback.serve.dashboard import PAGES, SectionState
from winback.serve.deps import AppState, DashboardData, DashboardPage, State
from winback.serve.keys import authenticate
from winback.serve.session import same_origin

router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)
log = logging.getLogger("winback.serve")

#: Headers of every dashboard response but the static files.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
_FILTERS = ("since", "until", "flow", "channel")
#: No icon: the browser would otherwise ask for /favicon.ico, which is not there.
_NO_ICON = '<link rel="icon" href="data:,">'
_DESCRIPTIONS = {
    "kpis": "funnel, recovery against the holdout, carts, orders, channels, discount, cohorts, churn, CLV",
    "holdout": "treated against the holdout by flow, action, channel and week; uplift by decile",
    "policies": "what each flow would earn per decision, off-policy",
    "segments": "the comparison for new, returning and loyal customers",
    "at-risk": "the customers with the most at stake",
    "model-health": "AUC, calibration and drift of the deployed models",
    "demand": "the most abandoned products and price bands",
}


# --------------------------------------------------------------------------- static files


@dataclass
class Asset:
    """A static file, kept in memory with a hash of its content (its ETag and its URL's version)."""

    name: str
    body: bytes
    media_type: str
    etag: str

    @functools.cached_property
    def gzipped(self) -> bytes:
        """The body compressed (plotly.js: 4.8 MB, 1.5 MB gzipped), on first use."""
        return gzip.compress(self.body, 6, mtime=0)


def _read_asset(name: str) -> bytes:
    if name == "plotly.min.js":
        return (resources.files("plotly") / "package_data" / "plotly.min.js").read_bytes()
    return (resources.files("winback.serve") / "static" / name).read_bytes()


@functools.cache
def asset(name: str) -> Asset:
    """The static file ``name`` (plotly.min.js, dashboard.js, dashboard.css); KeyError if unknown."""
    if name not in ("plotly.min.js", "dashboard.js", "dashboard.css"):
        raise KeyError(name)
    body = _read_asset(name)
    media = "text/css; charset=utf-8" if name.endswith(".css") else "text/javascript; charset=utf-8"
    return Asset(name, body, media, hashlib.sha256(body).hexdigest()[:16])


def asset_url(name: str) -> str:
    return f"/dashboard/static/{name}?v={asset(name).etag}"


@router.get("/static/{name}")
def static_file(name: str, request: Request) -> Response:
    """A static file, immutable under its versioned URL (gzip when the browser takes it)."""
    try:
        found = asset(name)
    except KeyError:
        raise HTTPException(404, f"no static file {name!r}") from None
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable",
        "ETag": f'"{found.etag}"',
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match", "").strip('W/"') == found.etag:
        return Response(status_code=304, headers=headers)
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(found.gzipped, media_type=found.media_type, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


# --------------------------------------------------------------------------- pages


def _chosen(request: Request) -> dict[str, str]:
    """The filters the request names (empty ones left out)."""
    return {k: v.strip() for k in _FILTERS if (v := request.query_params.get(k)) and v.strip()}


def _parse(chosen: dict[str, str]) -> Filters:
    try:
        return Filters.parse(*(chosen.get(k) for k in _FILTERS))
    except BadInputError as error:
        raise BadInputError(str(error).replace("--", "")) from None


def _query(chosen: dict[str, str]) -> str:
    return f"?{urlencode(chosen)}" if chosen else ""


def _time(at: datetime) -> str:
    return f"{at:%H:%M:%S} UTC"


def fragment(section_id: str, state: SectionState, chosen: dict[str, str], refresh: float) -> str:
    """The section's HTML inside the element the page's script refreshes."""
    computed = state.computed
    mode = "busy" if state.busy else "computing" if state.computing else "ready"
    parts = []
    if computed is None:
        if state.busy:
            parts.append(
                f'<p class="warning">{html.escape(state.busy)}: nothing computed yet for these filters. '
                "This section fills in by itself when the data can be read.</p>"
            )
        else:
            parts.append(
                '<p class="placeholder">Computing this section from the event store and the decision log '
                "(the first time for these filters takes a while); it appears here by itself.</p>"
            )
    else:
        if state.busy:
            parts.append(
                f'<p class="warning">{html.escape(state.busy)}: these figures were computed at '
                f"{_time(computed.at)}; they are updated when it finishes.</p>"
            )
        elif state.computing:
            parts.append(
                f'<p class="note">New data arrived: these figures, computed at {_time(computed.at)}, are '
                "being updated.</p>"
            )
        parts.append(str(computed.section.html))
        parts.append(
            f'<p class="updated">Computed at {_time(computed.at)} in {computed.seconds:.1f} s; the page '
            f"checks for new data every {refresh:g} s.</p>"
        )
    version = computed.version if computed else "none"
    src = f"/dashboard/fragments/{section_id}{_query(chosen)}"
    return (
        f'<div class="fragment" data-section="{section_id}" data-src="{html.escape(src)}" '
        f'data-version="{version}" data-state="{mode}">{"".join(parts)}</div>'
    )


def _filter_form(chosen: dict[str, str], policies: list[str], page_url: str) -> str:
    def options(name: str, values: list[str]) -> str:
        picked = chosen.get(name, "")
        if picked and picked not in values:
            values = [*values, picked]
        return "".join(
            f'<option value="{html.escape(v)}"{" selected" if v == picked else ""}>'
            f"{html.escape(v or 'all')}</option>"
            for v in ["", *values]
        )

    def date(name: str, label: str) -> str:
        value = html.escape(chosen.get(name, ""))
        return f'<label>{label}<input type="date" name="{name}" value="{value}"></label>'

    return (
        f'<form class="filters" method="get" action="{page_url}">'
        + date("since", "From")
        + date("until", "Until (not included)")
        + f'<label>Flow<select name="flow">{options("flow", policies)}</select></label>'
        + f'<label>Channel<select name="channel">{options("channel", list(CHANNELS))}</select></label>'
        + f'<button type="submit">Apply</button><a href="{page_url}">Reset</a></form>'
    )


def _links(page_id: str, chosen: dict[str, str], policies: list[str]) -> str:
    query = html.escape(_query(chosen))
    current = ' aria-current="page"'
    pages = "".join(
        f'<a href="{_page_url(p)}{query}"{current if p == page_id else ""}>'
        f"{'Overview' if p == 'summary' else html.escape(title)}</a>"
        for p, title in PAGES.items()
    )
    sign_out = (
        '<form class="logout" method="post" action="/dashboard/logout">'
        '<button type="submit">Sign out</button></form>'
    )
    filters = _filter_form(chosen, policies, _page_url(page_id))
    return f'<div class="bar"><nav class="pages">{pages}</nav>{sign_out}</div>{filters}'


def _page_url(page_id: str) -> str:
    return "/dashboard" if page_id == "summary" else f"/dashboard/{page_id}"


def _head(refresh: float) -> str:
    return (
        f'{_NO_ICON}<meta name="winback-refresh" content="{refresh:g}">'
        f'<link rel="stylesheet" href="{asset_url("dashboard.css")}">'
        f'<script src="{asset_url("plotly.min.js")}"></script>'
        f'<script src="{asset_url("dashboard.js")}" defer></script>'
    )


def _render(
    state: AppState,
    page_id: str,
    chosen: dict[str, str],
    found: SectionState | None,
    error: str | None = None,
) -> str:
    refresh = state.settings.dashboard_refresh_seconds
    if found is None:
        body = f'<p class="error">{html.escape(error or "")}</p>'
        shown = [Section(page_id, PAGES[page_id], body)]
        policies: list[str] = []
        period = None
    else:
        shown = [Section(page_id, PAGES[page_id], fragment(page_id, found, chosen, refresh))]
        policies, period = found.policies, found.period
        if page_id == "summary":
            listing = "".join(
                f'<li><a href="{_page_url(p)}{html.escape(_query(chosen))}">{html.escape(PAGES[p])}</a>: '
                f"{html.escape(d)}</li>"
                for p, d in _DESCRIPTIONS.items()
            )
            shown.append(Section("pages", "Pages", f"<ul>{listing}</ul>"))
    if period is None:  # not read from the store yet
        period = f"{chosen.get('since', 'the first event')} to {chosen.get('until', 'the last event')}"
    scope = "".join(f", {k} {v}" for k, v in chosen.items() if k in ("flow", "channel"))
    return render_page(
        shown,
        title=f"winback dashboard: {'overview' if page_id == 'summary' else PAGES[page_id]}",
        subtitle=f"{period}{scope}; event store {state.settings.store_path}",
        footer="Incremental figures come from the randomised holdout; attributed ones are labelled as such. "
        "The same figures as `winback report`.",
        head=_head(refresh),
        links=_links(page_id, chosen, policies),
    )


def _show(request: Request, state: AppState, page_id: str) -> HTMLResponse:
    chosen = _chosen(request)
    try:
        filters = _parse(chosen)
    except BadInputError as error:
        text = f"Filters: {error}. Correct them above, or reset them."
        return HTMLResponse(_render(state, page_id, chosen, None, text), 400, headers=SECURITY_HEADERS)
    found = state.dashboard.section(filters, page_id)
    status = 503 if found.computed is None and found.busy else 200
    headers = {**SECURITY_HEADERS, **({"Retry-After": "5"} if status == 503 else {})}
    return HTMLResponse(_render(state, page_id, chosen, found), status, headers=headers)


@router.get("/fragments/{section_id}")
def section_fragment(section_id: str, request: Request, state: State, _key: DashboardData) -> Response:
    """One section's HTML: 200 with the figures, 202 while they are first computed, 204 when they are
    still the ``known`` version, 503 while a writer holds the data and nothing was computed yet."""
    if section_id not in PAGES:
        raise HTTPException(404, f"no dashboard section {section_id!r}: expected one of {', '.join(PAGES)}")
    chosen = _chosen(request)
    filters = _parse(chosen)
    found = state.dashboard.section(filters, section_id, wait=0)
    text = fragment(section_id, found, chosen, state.settings.dashboard_refresh_seconds)
    mode = "busy" if found.busy else "computing" if found.computing else "ready"
    token = f"{found.computed.version if found.computed else 'none'}.{mode}"
    if request.query_params.get("known") == token:
        return Response(status_code=204, headers=SECURITY_HEADERS)
    status = 200 if found.computed else 503 if found.busy else 202
    headers = {**SECURITY_HEADERS, **({"Retry-After": "5"} if status == 503 else {})}
    return HTMLResponse(text, status, headers=headers)


# --------------------------------------------------------------------------- sign in and out

_SIGN_IN = Environment(autoescape=True).from_string("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>winback dashboard: sign in</title>{{ icon }}<link rel="stylesheet" href="{{ css }}"></head>
<body class="signin-page">
<main class="signin"><h1>winback dashboard</h1>
{% if message %}<p class="{{ kind }}" role="alert">{{ message }}</p>{% endif %}
<form method="post" action="/dashboard/login">
<label for="key">API key (read scope is enough)</label>
<input id="key" name="key" type="password" autocomplete="off" required autofocus>
<input type="hidden" name="next" value="{{ next }}">
<button type="submit">Sign in</button></form>
<p class="note">Create a key with <code>winback keys create --scope read --label dashboard</code>.
Scripts can send it as <code>Authorization: Bearer &lt;key&gt;</code> instead.</p></main></body></html>
""")


def _safe_next(wanted: str | None) -> str:
    """Where to go after signing in: a dashboard path of this service, never another site."""
    if not wanted:
        return "/dashboard"
    parts = urlsplit(wanted)
    if parts.scheme or parts.netloc or "\\" in wanted or not (parts.path + "/").startswith("/dashboard/"):
        return "/dashboard"
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _sign_in_page(status: int, next_url: str, message: str = "", kind: str = "note") -> HTMLResponse:
    page = _SIGN_IN.render(
        css=asset_url("dashboard.css"), icon=Markup(_NO_ICON), next=next_url, message=message, kind=kind
    )
    return HTMLResponse(page, status, headers=SECURITY_HEADERS)


@router.get("/login")
def sign_in_form(request: Request, state: State) -> Response:
    """The sign-in form (straight to the dashboard with a valid session)."""
    next_url = _safe_next(request.query_params.get("next"))
    if state.sessions.key(state.engine, request) is not None:
        return RedirectResponse(next_url, 303, headers=SECURITY_HEADERS)
    message = "Signed out." if request.query_params.get("signed_out") else ""
    return _sign_in_page(200, next_url, message)


@router.post("/login")
async def sign_in(request: Request, state: State) -> Response:
    """Exchange a key for a session cookie; a form from another origin, or a wrong key, is refused."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"), max_num_fields=10)
    next_url = _safe_next((form.get("next") or [""])[0])
    if not same_origin(request, state.settings):
        state.metrics.auth_failures.labels("dashboard_origin").inc()
        log.warning("refused dashboard sign-in: the form did not come from this service's origin")
        return _sign_in_page(
            403,
            next_url,
            "Sign-in refused: the form must be sent from this dashboard's own sign-in page "
            "(the request's Origin was missing or another site's).",
            "error",
        )
    token = (form.get("key") or [""])[0].strip()
    key = authenticate(state.engine, token) if token else None
    if key is None:
        state.metrics.auth_failures.labels("dashboard_login").inc()
        log.warning("refused dashboard sign-in: %s API key", "invalid" if token else "missing")
        return _sign_in_page(
            401,
            next_url,
            "That key is not valid: it is mistyped, revoked, or not a winback API key."
            if token
            else "Enter an API key.",
            "error",
        )
    log.info("dashboard sign-in with key %s", key.key_id)
    response = RedirectResponse(next_url, 303, headers=SECURITY_HEADERS)
    state.sessions.start(response, request, key)
    return response


@router.post("/logout")
def sign_out(request: Request, state: State) -> Response:
    """End the browser's session (the cookie is removed; revoking the key ends every session of it)."""
    if not same_origin(request, state.settings):
        log.warning("refused dashboard sign-out: the form did not come from this service's origin")
        return _sign_in_page(403, "/dashboard", "Sign-out refused: send it from the dashboard.", "error")
    response = RedirectResponse("/dashboard/login?signed_out=1", 303, headers=SECURITY_HEADERS)
    state.sessions.end(response)
    return response


# --------------------------------------------------------------------------- the pages (last: {page_id})


@router.get("")
def overview(request: Request, state: State, _key: DashboardPage) -> HTMLResponse:
    """The overview: the report's summary, with links to every page."""
    return _show(request, state, "summary")


@router.get("/{page_id}")
def section_page(page_id: str, request: Request, state: State, _key: DashboardPage) -> HTMLResponse:
    """One section of the report as a page."""
    if page_id not in PAGES or page_id == "summary":
        pages = ", ".join(list(PAGES)[1:])
        raise HTTPException(404, f"no dashboard page {page_id!r}: expected one of {pages}")
    return _show(request, state, page_id)
