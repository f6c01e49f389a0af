"""Dependencies of the routes: the app's state and API-key authentication."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.engine import Engine

from winback.config import Settings
from winback.serve.keys import ApiKey, allows, authenticate
from winback.serve.metrics import Metrics

log = logging.getLogger("winback.serve")


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    metrics: Metrics


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
