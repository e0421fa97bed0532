"""Operations endpoints: liveness, readiness and the Prometheus scrape."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from ..store import StoreUnavailable
from .errors import RETRY_AFTER_SECONDS, error_response
from .extension import current_bridge
from .openapi import document

__all__ = ["bp"]

bp = Blueprint("ops", __name__)


@bp.get("/api/v1/openapi.json")
def openapi():
    """Describe the API as OpenAPI 3, with this deployment's limits."""
    return jsonify(document(current_bridge().settings))


@bp.get("/healthz")
def healthz():
    """Answer 200 while the process serves requests."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Answer 200 when the store takes writes, else 503."""
    try:
        current_bridge().monitor.store.ping()
    except StoreUnavailable as exc:
        response = error_response(503, f"store unavailable: {exc}")
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return response
    return jsonify(status="ready")


@bp.get("/metrics")
def metrics():
    """Expose every metric: Prometheus text, or OpenMetrics when the Accept header asks."""
    bridge = current_bridge()
    bridge.authorizer.read(request.headers.get("Authorization"))
    body, content_type = bridge.exposition.render(request.headers.get("Accept", ""))
    return Response(body, content_type=content_type)
