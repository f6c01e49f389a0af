"""Channels: what sends a rendered message to a provider.

A channel's ``send(message, rendered)`` returns a :class:`Receipt` or raises :class:`TransientError`
(the provider may accept it later: SMTP 4xx, a refused or dropped connection, webhook 5xx, 408, 429, a
timeout; the worker retries with backoff) or :class:`PermanentError` (it never will: SMTP 5xx, webhook
4xx; the message fails). Every send carries the message's idempotency key so that a receiver can
deduplicate a message sent twice after a worker died between sending and recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from winback.act.outbox import Message
from winback.act.render import Rendered

__all__ = ["Channel", "PermanentError", "Receipt", "TransientError"]


class TransientError(Exception):
    """The provider did not take the message this time; try again later."""


class PermanentError(Exception):
    """The provider refused the message for good."""


@dataclass(frozen=True)
class Receipt:
    """What the provider answered."""

    provider_message_id: str | None
    result: str


class Channel(Protocol):
    def send(self, message: Message, rendered: Rendered) -> Receipt: ...

    def close(self) -> None: ...
