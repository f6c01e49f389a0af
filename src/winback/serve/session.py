"""The dashboard's login: an API key exchanged for a signed, expiring session cookie.

Browsers cannot send an ``Authorization`` header when a person follows a link, so the dashboard's login
form takes a key once and answers with a cookie that names the key (its id, never its secret), signed
with the settings' ``secret_key`` and timestamped (itsdangerous, as Flask's sessions are). Each request
checks the signature and the age, then that the key is still active: revoking the key ends its sessions.
The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page or form
sends it) and ``Secure`` when the service is reached over HTTPS.

The login form's POST is checked against cross-site forgery by its ``Origin`` (or, failing that, its
``Referer``): it must be this service's own origin, as the request addresses it or as ``public_url``
names it.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import Request, Response
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy.engine import Engine

from winback.config import Settings
from winback.serve.keys import ApiKey, active_key, allows

__all__ = ["COOKIE", "Sessions", "same_origin"]

#: The session cookie's name.
COOKIE = "winback_dashboard"
#: What signatures of dashboard sessions are salted with, so no other signed value is accepted as one.
_SALT = "winback-dashboard-session-v1"


class Sessions:
    """Issues and checks dashboard session cookies with one secret and lifetime."""

    def __init__(self, settings: Settings) -> None:
        self._serializer = URLSafeTimedSerializer(settings.secret_key.get_secret_value(), salt=_SALT)
        self.max_age = int(settings.dashboard_session_hours * 3600)
        self._public_https = (settings.public_url or "").startswith("https://")

    def start(self, response: Response, request: Request, key: ApiKey) -> None:
        """Set the cookie of a session for ``key`` on ``response``."""
        response.set_cookie(
            COOKIE,
            self._serializer.dumps({"k": key.key_id}),
            max_age=self.max_age,
            path="/dashboard",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https" or self._public_https,
        )

    def end(self, response: Response) -> None:
        """Remove the session cookie."""
        response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")

    def key(self, engine: Engine, request: Request) -> ApiKey | None:
        """The active key whose session the request's cookie is (None: no cookie, a bad or expired
        signature, a revoked key, or one that cannot read)."""
        value = request.cookies.get(COOKIE)
        if not value:
            return None
        try:
            payload = self._serializer.loads(value, max_age=self.max_age)
        except (SignatureExpired, BadSignature):
            return None
        key_id = payload.get("k") if isinstance(payload, dict) else None
        if not isinstance(key_id, str):
            return None
        key = active_key(engine, key_id)
        return key if key is not None and allows(key, "read") else None


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else None


def same_origin(request: Request, settings: Settings) -> bool:
    """Whether a form POST comes from this service's own pages (its ``Origin``, else ``Referer``)."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    origin = _origin(sent) if sent and sent != "null" else None
    if origin is None:
        return False
    host = request.headers.get("host")
    allowed = {_origin(settings.public_url)} if settings.public_url else set()
    if host:
        allowed.add(f"{request.url.scheme}://{host}".lower())
    return origin in allowed
