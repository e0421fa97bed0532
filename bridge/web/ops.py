"""Operations endpoints: liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from .errors import by_view, refusals
from .extension import current_bridge
from .openapi import document

__all__ = ["bp"]

bp = Blueprint("ops", __name__)
refusals(bp, by_view())


@bp.get("/api/v1/openapi.json")
def openapi() -> ResponseReturnValue:
    """Describe the API as OpenAPI 3, with this deployment's limits."""
    return jsonify(document(current_bridge().settings))


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Answer 200 while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Answer 200 when the store takes writes, else 503."""
    current_bridge().monitor.store.ping()
    return jsonify(status="ready")


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    """Expose every metric: Prometheus text, or OpenMetrics when the Accept header asks."""
    bridge = current_bridge()
    bridge.authorizer.read(request.headers.get("Authorization"))
    body, content_type = bridge.exposition.render(request.headers.get("Accept", ""))
    return Response(body, content_type=content_type)
