"""Dependencies of the routes: the app's state, API-key authentication, and the dashboard's viewer (an
API key or a login session)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request
from sqlalchemy.engine import Engine

from winback.config import Settings
from winback.serve.dashboard import Dashboard
from winback.serve.keys import ApiKey, allows, authenticate
from winback.serve.metrics import Metrics
from winback.serve.session import Sessions

log = logging.getLogger("winback.serve")


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    metrics: Metrics
    dashboard: Dashboard = field(init=False)
    sessions: Sessions = field(init=False)

    def __post_init__(self) -> None:
        self.dashboard = Dashboard(self.settings)
        self.sessions = Sessions(self.settings)


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.winback
    return state


State = Annotated[AppState, Depends(app_state)]


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def require(scope: str) -> Callable[..., ApiKey]:
    """A dependency that lets through only requests with a valid key covering ``scope``."""

    def check(request: Request, state: State) -> ApiKey:
        token = _token(request)
        key = authenticate(state.engine, token)
        if key is None:
            reason = "missing" if not token else "invalid"
            state.metrics.auth_failures.labels(reason).inc()
            log.warning("refused %s %s: %s API key", request.method, request.url.path, reason)
            raise HTTPException(
                401,
                f"API key: {reason}; send one as 'Authorization: Bearer <key>' (winback keys create)",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not allows(key, scope):
            state.metrics.auth_failures.labels("scope").inc()
            log.warning(
                "refused %s %s: key %s has scope %s", request.method, request.url.path, key.key_id, key.scope
            )
            raise HTTPException(
                403, f"API key {key.key_id}: scope {key.scope} does not allow this ({scope} needed)"
            )
        return key

    return check


WriteKey = Annotated[ApiKey, Depends(require("write"))]
ReadKey = Annotated[ApiKey, Depends(require("read"))]


def _viewer(request: Request, state: AppState) -> ApiKey | None:
    """A key that may read: the request's Bearer key (scripts), else its dashboard session's."""
    token = _token(request)
    if token:
        key = authenticate(state.engine, token)
        if key is None:
            state.metrics.auth_failures.labels("invalid").inc()
            log.warning("refused %s %s: invalid API key", request.method, request.url.path)
        return key if key is not None and allows(key, "read") else None
    return state.sessions.key(state.engine, request)


def dashboard_page(request: Request, state: State) -> ApiKey:
    """A dashboard page's viewer; without one, a redirect to the login form (back here after it)."""
    key = _viewer(request, state)
    if key is None:
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(
            303, "sign in first", headers={"Location": f"/dashboard/login?next={quote(wanted, safe='')}"}
        )
    return key


def dashboard_data(request: Request, state: State) -> ApiKey:
    """The viewer of a dashboard fragment (fetched by the page's script, or by a script with a key)."""
    key = _viewer(request, state)
    if key is None:
        raise HTTPException(
            401,
            "sign in at /dashboard/login, or send a read key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key


DashboardPage = Annotated[ApiKey, Depends(dashboard_page)]
DashboardData = Annotated[ApiKey, Depends(dashboard_data)]
