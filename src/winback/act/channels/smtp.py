"""E-mail through SMTP (smtplib), one kept-open connection per worker thread.

Each message is ``multipart/alternative`` (the plain-text part, then the HTML part) with
``Message-ID: <idempotency key@winback>``: the same message sent twice carries the same id, which is
what a receiver deduplicates on. The server's answer to DATA (e.g. ``250 2.0.0 Ok: queued as 4F1C``) is
recorded as the provider's message id. 4xx answers and connection errors are transient (retried), 5xx
permanent.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate

from winback.act.channels import PermanentError, Receipt, TransientError
from winback.act.outbox import Message
from winback.act.render import Rendered
from winback.config import Settings

__all__ = ["SMTPChannel", "build_email", "message_id"]


def message_id(idempotency_key: str) -> str:
    return f"<{idempotency_key}@winback>"


def build_email(message: Message, rendered: Rendered, sender: str) -> EmailMessage:
    """The e-mail of ``message``: subject, plain text, HTML, and its idempotency key as Message-ID."""
    email = EmailMessage()
    email["From"] = sender
    email["To"] = message.recipient
    email["Subject"] = rendered.subject or ""
    email["Date"] = formatdate(localtime=False, usegmt=True)
    email["Message-ID"] = message_id(message.idempotency_key)
    email["X-Winback-Message"] = str(message.id)
    email.set_content(rendered.text)
    if rendered.html:
        email.add_alternative(rendered.html, subtype="html")
    return email


def _error(code: int, text: bytes | str, what: str) -> Exception:
    detail = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    error = f"SMTP {what}: {code} {detail}".strip()
    return TransientError(error) if 400 <= code < 500 else PermanentError(error)


class SMTPChannel:
    """Sends e-mail through the SMTP server of the settings (``smtp_host``, ``smtp_port``,
    ``smtp_user``/``smtp_password``, ``smtp_from``, ``smtp_starttls``)."""

    def __init__(self, settings: Settings, timeout: float = 30.0) -> None:
        self.host = settings.smtp_host
        self.port = settings.smtp_port
        self.user = settings.smtp_user
        self.password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        self.sender = settings.smtp_from
        self.starttls = settings.smtp_starttls
        self.timeout = timeout
        self._smtp: smtplib.SMTP | None = None
        try:
            self._envelope_from = Address(addr_spec=self.sender).addr_spec
        except (ValueError, IndexError):
            self._envelope_from = self.sender

    def _connection(self) -> smtplib.SMTP:
        if self._smtp is None:
            try:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
                smtp.ehlo()
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if self.user:
                    smtp.login(self.user, self.password or "")
            except smtplib.SMTPAuthenticationError as error:
                raise PermanentError(
                    f"SMTP login as {self.user}: {error.smtp_code} {error.smtp_error!r}"
                ) from None
            except (OSError, smtplib.SMTPException) as error:
                raise TransientError(f"SMTP {self.host}:{self.port}: {error}") from None
            self._smtp = smtp
        return self._smtp

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            finally:
                self._smtp = None

    def send(self, message: Message, rendered: Rendered) -> Receipt:
        data = build_email(message, rendered, self.sender).as_bytes(policy=SMTP_POLICY)
        smtp = self._connection()
        try:
            code, answer = smtp.mail(self._envelope_from)
            if code != 250:
                smtp.rset()
                raise _error(code, answer, "MAIL FROM")
            code, answer = smtp.rcpt(message.recipient)
            if code not in (250, 251):
                smtp.rset()
                raise _error(code, answer, f"RCPT TO {message.recipient}")
            code, answer = smtp.data(data)
            if code != 250:
                smtp.rset()
                raise _error(code, answer, "DATA")
        except (OSError, smtplib.SMTPServerDisconnected) as error:
            self._drop()
            raise TransientError(f"SMTP {self.host}:{self.port}: {type(error).__name__} {error}") from None
        except smtplib.SMTPResponseException as error:
            self._drop()
            raise _error(error.smtp_code, error.smtp_error, "answer") from None
        return Receipt(answer.decode(errors="replace")[:300], f"{code}")

    def close(self) -> None:
        if self._smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._smtp.quit()
            self._smtp = None
