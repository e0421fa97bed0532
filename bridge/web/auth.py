"""Bearer tokens: fleet tokens for the ingest API, per-execution tokens, a metrics token.

Off unless configured. A fleet token (``BRIDGE_AUTH_TOKENS``) may report for any
execution; a per-execution token, ``HMAC-SHA256(BRIDGE_EXECUTION_TOKEN_SECRET,
execution_id)`` handed to one container by its launcher, only for its own. Every
comparison takes constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from ..core.errors import Forbidden, NotFound, Unauthorized
from ..service.config import Settings

__all__ = ["Authorizer", "Grant", "basic_password", "execution_token"]


def execution_token(secret: str, execution_id: str) -> str:
    """Return the token that lets a container report for ``execution_id`` (its canonical form)."""
    return hmac.new(secret.encode(), execution_id.encode(), hashlib.sha256).hexdigest()


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def basic_password(header: str | None) -> str | None:
    """Return the password of HTTP basic authentication (a browser's only way to send a
    secret without a script), whatever the user name; None for another scheme."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        credentials = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, separator, password = credentials.partition(":")
    return password or None if separator else None


@dataclass(frozen=True)
class Grant:
    """What one request's token allows: every execution, or those its token was made for."""

    any_execution: bool
    token: str | None = None


class Authorizer:
    """Checks the ``Authorization`` header of ingest and read requests."""

    def __init__(self, settings: Settings):
        self._fleet = tuple(t.encode() for t in settings.auth_tokens)
        self._secret = settings.execution_token_secret
        self._metrics = settings.metrics_token.encode() if settings.metrics_token else None
        self._ping_keys = tuple(key.encode() for key in settings.ping_keys)
        # public key -> the project it is bound to ("" for any)
        self._sentry_keys = {key.partition("@")[0]: key.partition("@")[2] for key in settings.sentry_keys}

    @property
    def ingest_open(self) -> bool:
        """True when the ingest API needs no token."""
        return not self._fleet and self._secret is None

    def ingest(self, header: str | None) -> Grant:
        """Return what the bearer token in ``header`` allows. Raises :class:`Unauthorized`."""
        if self.ingest_open:
            return Grant(any_execution=True)
        token = _bearer(header)
        if token is None:
            raise Unauthorized("this endpoint needs Authorization: Bearer <token>", "Authorization")
        presented = token.encode()
        # Compare with every fleet token, so the time taken says nothing of which matched.
        matched = False
        for fleet_token in self._fleet:
            matched |= hmac.compare_digest(presented, fleet_token)
        if matched:
            return Grant(any_execution=True)
        if self._secret is None:
            raise Unauthorized("the bearer token is not valid", "Authorization")
        return Grant(any_execution=False, token=token)

    def check(self, grant: Grant, execution_id: str) -> None:
        """Raise :class:`Forbidden` unless ``grant`` covers ``execution_id``."""
        if grant.any_execution:
            return
        # a grant for some executions only is made from a token, and only with a secret
        assert grant.token is not None and self._secret is not None
        expected = execution_token(self._secret, execution_id)
        if not hmac.compare_digest(grant.token.encode(), expected.encode()):
            raise Forbidden(f"the token does not grant execution {execution_id}", "Authorization")

    def ping_key(self, key: str) -> None:
        """Raise :class:`NotFound` unless ``key`` is one of ``BRIDGE_PING_KEYS`` (as Healthchecks
        answers a ping to a key it does not know)."""
        matched = False
        for known in self._ping_keys:
            matched |= hmac.compare_digest(key.encode(), known)
        if not matched:
            raise NotFound("not found", "ping_key")

    def sentry(self, key: str | None, project: str) -> None:
        """Check a Sentry check-in's public key: one of ``BRIDGE_SENTRY_KEYS`` when that is set,
        and a key bound to a project (``<key>@<project>``) only on that project's URL.
        Raises :class:`Unauthorized` or :class:`Forbidden`."""
        if not key:
            raise Unauthorized("missing authorization information", "X-Sentry-Auth")
        if not self._sentry_keys:
            return
        bound = None
        for known, known_project in self._sentry_keys.items():
            if hmac.compare_digest(key.encode(), known.encode()):
                bound = known_project
        if bound is None:
            raise Unauthorized("the public key is not one of BRIDGE_SENTRY_KEYS", "sentry_key")
        if bound and bound != project:
            raise Forbidden(f"the public key is bound to project {bound}, not {project}", "sentry_key")

    def read(self, header: str | None) -> None:
        """Raise :class:`Unauthorized` unless the metrics token is absent or presented, as a
        bearer token or as the password of basic authentication."""
        if self._metrics is None:
            return
        token = _bearer(header) or basic_password(header)
        if token is None or not hmac.compare_digest(token.encode(), self._metrics):
            raise Unauthorized("this endpoint needs Authorization: Bearer <metrics token>", "Authorization")
