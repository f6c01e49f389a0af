"""Signed tracking and unsubscribe links: the open pixel, click redirects and the unsubscribe page.

A token is ``<payload>.<signature>``, both base64url without padding: the payload is a small JSON
object (``k`` kind: ``o`` open, ``c`` click, ``u`` unsubscribe; ``m`` the outbox message id; ``ch``
the message's channel; ``u`` the target URL of a click; ``t`` when it was issued, epoch seconds) and
the signature is HMAC-SHA256 of the payload under the settings' ``secret_key`` (with a domain prefix,
so no other winback signature can be replayed as a link). :func:`verify` checks the signature in
constant time before it reads anything of the payload: a changed byte, a token signed with another
secret, or one of another kind is rejected with :class:`BadTokenError`. The payload is signed, not
encrypted: it holds no personal data (the message id leads to the customer only through the
service's own database).

>>> signer = Signer("secret")
>>> token = signer.sign(Link("click", 7, "email", "https://shop.example/p/1"), issued_at=1_700_000_000)
>>> signer.verify(token, "click").target
'https://shop.example/p/1'
>>> signer.verify(token[:-2] + ("AA" if not token.endswith("AA") else "BB"), "click")
... # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
winback.act.tracking.BadTokenError: signature does not match
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from winback.config import Settings
from winback.errors import BadInputError

__all__ = ["TRACKING_KINDS", "BadTokenError", "Link", "Links", "Signer", "link_urls"]

Kind = Literal["open", "click", "unsubscribe"]
TRACKING_KINDS: dict[Kind, str] = {"open": "o", "click": "c", "unsubscribe": "u"}
_KINDS_BY_CODE = {code: kind for kind, code in TRACKING_KINDS.items()}
_DOMAIN = b"winback-link-v1\x00"
MAX_TOKEN_CHARS = 4096


class BadTokenError(Exception):
    """A token that is malformed, not signed by this service's secret, or of another kind."""


@dataclass(frozen=True)
class Link:
    """What a token says: its kind, the outbox message, the channel, a click's target, when issued."""

    kind: Kind
    message_id: int
    channel: str
    target: str | None = None
    issued_at: int = 0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_target(url: str) -> str:
    """A click target must be an absolute http(s) URL (never ``javascript:`` or a relative path)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c in url for c in "\r\n"):
        raise BadInputError(f"link target {url[:200]!r}: expected an absolute http:// or https:// URL")
    return url


class Signer:
    """Signs and verifies link tokens with one secret."""

    def __init__(self, secret: str | bytes) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if not key:
            raise BadInputError("secret_key: empty; tracking links need a signing secret")
        self._key = key

    @classmethod
    def from_settings(cls, settings: Settings) -> Signer:
        return cls(settings.secret_key.get_secret_value())

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, _DOMAIN + payload, hashlib.sha256).digest()

    def sign(self, link: Link, *, issued_at: int | None = None) -> str:
        """The URL-safe token of ``link`` (a click needs its http(s) target)."""
        body: dict[str, object] = {
            "k": TRACKING_KINDS[link.kind],
            "m": int(link.message_id),
            "ch": link.channel,
            "t": int(time.time()) if issued_at is None else int(issued_at),
        }
        if link.kind == "click":
            if not link.target:
                raise BadInputError("click link: a target URL is required")
            body["u"] = check_target(link.target)
        payload = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str, kind: Kind) -> Link:
        """The link of a token this signer made for ``kind``; :class:`BadTokenError` otherwise (the
        signature is compared in constant time, before the payload is parsed)."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise BadTokenError("malformed token")
        encoded, signature = token.split(".")
        try:
            payload, mac = _unb64(encoded), _unb64(signature)
        except (binascii.Error, ValueError):
            raise BadTokenError("malformed token") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise BadTokenError("signature does not match")
        try:
            body = json.loads(payload)
            found = _KINDS_BY_CODE[body["k"]]
            link = Link(found, int(body["m"]), str(body["ch"]), body.get("u"), int(body["t"]))
        except (ValueError, KeyError, TypeError):
            raise BadTokenError("malformed payload") from None
        if found != kind:
            raise BadTokenError(f"a {found} token used as {kind}")
        if kind == "click":
            try:
                check_target(link.target or "")
            except BadInputError:
                raise BadTokenError("click target is not an http(s) URL") from None
        return link


@dataclass(frozen=True)
class Links:
    """Builds a message's tracking links: the service's public base URL and the signer."""

    public_url: str
    signer: Signer
    shop_url: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Links | None:
        """The settings' links, or None without ``public_url`` (messages then go out untracked and
        without an unsubscribe link)."""
        if not settings.public_url:
            return None
        return cls(settings.public_url.rstrip("/"), Signer.from_settings(settings), settings.shop_url)

    def open_url(self, message_id: int, channel: str) -> str:
        return f"{self.public_url}/t/o/{self.signer.sign(Link('open', message_id, channel))}"

    def click_url(self, message_id: int, channel: str, target: str) -> str:
        return f"{self.public_url}/t/c/{self.signer.sign(Link('click', message_id, channel, target))}"

    def unsubscribe_url(self, message_id: int, channel: str) -> str:
        return f"{self.public_url}/u/{self.signer.sign(Link('unsubscribe', message_id, channel))}"


def link_urls(
    links: Links | None, message_id: int, channel: str
) -> tuple[dict[str, str | None], Callable[[object], str]]:
    """What a template sees: ``links`` (``open_pixel``, ``unsubscribe``, ``cart``: the shop's cart
    page, tracked) and ``track(url)``, the click-tracked form of a URL (the URL itself without
    tracking, or when it is not http(s))."""
    if links is None:
        return {"open_pixel": None, "unsubscribe": None, "cart": None}, lambda url: str(url)

    def track(url: object) -> str:
        try:
            return links.click_url(message_id, channel, str(url))
        except BadInputError:
            return str(url)

    cart = track(links.shop_url) if links.shop_url else None
    return {
        "open_pixel": links.open_url(message_id, channel),
        "unsubscribe": links.unsubscribe_url(message_id, channel),
        "cart": cart,
    }, track
