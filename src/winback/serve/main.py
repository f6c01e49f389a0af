"""The FastAPI app: ``create_app(settings)``; ``winback serve`` runs it under uvicorn."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from winback import __version__
from winback.config import Settings, check_production
from winback.errors import BadInputError
from winback.serve.db import make_engine, upgrade
from winback.serve.deps import AppState
from winback.serve.limits import BodyLimit
from winback.serve.metrics import Metrics
from winback.serve.routes import customers, dashboard, events, health, tracking, webhooks


def create_app(settings: Settings, *, migrate: bool = True) -> FastAPI:
    """The service over the settings' database (migrated first unless ``migrate`` is False)."""
    check_production(settings)
    engine = make_engine(settings.state_url)
    if migrate:
        upgrade(engine)
    state = AppState(settings, engine, Metrics())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.dashboard.close()
        engine.dispose()

    app = FastAPI(
        title="winback",
        version=__version__,
        summary="Win back online shoppers: events in, decisions and messages out.",
        lifespan=lifespan,
    )
    app.state.winback = state
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(webhooks.router)
    app.include_router(tracking.router)
    app.include_router(customers.router)
    app.include_router(dashboard.router)

    @app.exception_handler(BadInputError)
    async def _bad_input(_request: Request, error: BadInputError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.middleware("http")
    async def _timed(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        state.metrics.requests.labels(getattr(route, "path", "unmatched"), str(response.status_code)).observe(
            time.perf_counter() - start
        )
        return response

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    def openapi() -> dict[str, Any]:
        # The events body is parsed by hand (one event, a list or {"events": [...]}): add its schema.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(events.schemas())
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def app_from_environment() -> FastAPI:
    """The app for uvicorn's worker processes (settings from the environment; already migrated)."""
    from winback.config import load_settings

    return create_app(load_settings(), migrate=False)
