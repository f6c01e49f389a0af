"""Liveness, readiness and metrics: no API key (a load balancer and Prometheus call them)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from winback.serve.db import current_revision, head_revision
from winback.serve.deps import State

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready"}})
def readyz(state: State) -> JSONResponse:
    """The database answers and is migrated to this winback's schema."""
    try:
        revision = current_revision(state.engine)
    except SQLAlchemyError as error:
        return JSONResponse({"status": "unavailable", "database": type(error).__name__}, status_code=503)
    head = head_revision()
    if revision != head:
        return JSONResponse(
            {"status": "migrating", "database_revision": revision, "expected": head}, status_code=503
        )
    return JSONResponse({"status": "ready", "database": state.engine.dialect.name, "revision": revision})


@router.get("/metrics", response_class=Response)
def metrics(state: State) -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
