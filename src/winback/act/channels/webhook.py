"""SMS and push through signed HTTP webhooks: one POST per message to the provider's (or your
gateway's) URL, kept-alive per worker thread.

The body is JSON: ``id`` (the idempotency key), ``channel``, ``to`` (phone number or push token),
``text``, ``title`` (push), ``user_id``, ``message_id``, ``coupon``. Headers: ``Idempotency-Key`` (the
same key: a receiver that has seen it answers without sending again), ``X-Winback-Signature:
sha256=<hex>``, the HMAC-SHA256 of the exact body bytes with ``WINBACK_WEBHOOK_SECRET``, which the
receiver recomputes (:func:`verify`, compared in constant time) to know the call is winback's. A 2xx
answer is a delivery (a JSON ``id`` in it is recorded as the provider's message id); 408, 429, 5xx,
timeouts and connection errors are transient; other 4xx permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
from urllib.parse import urlsplit

from winback.act.channels import PermanentError, Receipt, TransientError
from winback.act.outbox import Message
from winback.act.render import Rendered
from winback.errors import BadInputError

__all__ = ["SIGNATURE_HEADER", "WebhookChannel", "sign", "verify"]

SIGNATURE_HEADER = "X-Winback-Signature"


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, signature: str | None) -> bool:
    """Whether ``signature`` is winback's signature of ``body``."""
    return signature is not None and hmac.compare_digest(sign(secret, body), signature)


class WebhookChannel:
    """POSTs messages of one channel (``sms`` or ``push``) to ``url``, signed with ``secret``."""

    def __init__(self, channel: str, url: str | None, secret: str | None, timeout: float = 10.0) -> None:
        setting = f"WINBACK_{channel.upper()}_WEBHOOK_URL"
        if not url:
            raise BadInputError(f"{setting} is not set: the {channel} channel needs the provider's URL")
        if not secret:
            raise BadInputError(f"WINBACK_WEBHOOK_SECRET is not set: {channel} webhooks are signed with it")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadInputError(f"{setting} {url!r}: expected an http:// or https:// URL")
        self.channel = channel
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._secret = secret.encode()
        self.timeout = timeout
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = kind(self._host, self._port, timeout=self.timeout)
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def body(self, message: Message, rendered: Rendered) -> bytes:
        coupon = message.payload.get("coupon") or None
        document = {
            "id": message.idempotency_key,
            "channel": message.channel,
            "to": message.recipient,
            "text": rendered.text,
            "title": rendered.title,
            "user_id": message.user_id,
            "message_id": message.id,
            "coupon": coupon["code"] if coupon else None,
        }
        return json.dumps(document, separators=(",", ":")).encode()

    def send(self, message: Message, rendered: Rendered) -> Receipt:
        body = self.body(message, rendered)
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message.idempotency_key,
            SIGNATURE_HEADER: sign(self._secret, body),
        }
        for attempt in (0, 1):  # a kept-alive connection the server closed: once more on a fresh one
            connection = self._connect()
            try:
                connection.request("POST", self._path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as error:
                self._drop()
                if attempt:
                    raise TransientError(
                        f"{self.channel} webhook {self.url}: {type(error).__name__}"
                    ) from None
            except (TimeoutError, OSError, http.client.HTTPException) as error:
                self._drop()
                raise TransientError(
                    f"{self.channel} webhook {self.url}: {type(error).__name__} {error}"
                ) from None
        status = response.status
        if response.getheader("Connection", "").lower() == "close":
            self._drop()
        if 200 <= status < 300:
            provider_id = None
            try:
                found = json.loads(answer) if answer else None
                if isinstance(found, dict) and found.get("id") is not None:
                    provider_id = str(found["id"])[:300]
            except ValueError:
                pass
            return Receipt(provider_id, str(status))
        detail = answer[:300].decode(errors="replace")
        problem = f"{self.channel} webhook {self.url}: HTTP {status} {detail}".strip()
        if status in (408, 429) or status >= 500:
            raise TransientError(problem)
        raise PermanentError(problem)

    def close(self) -> None:
        self._drop()
