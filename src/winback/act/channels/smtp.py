"""E-mail through SMTP (smtplib), one kept-open connection per worker thread.

Each message is ``multipart/alternative`` (the plain-text part, then the HTML part) with
``Message-ID: <idempotency key@winback>``: the same message sent twice carries the same id, which is
what a receiver deduplicates on. The server's answer to DATA (e.g. ``250 2.0.0 Ok: queued as 4F1C``) is
recorded as the provider's message id. 4xx answers and connection errors are transient (retried), 5xx
permanent. With an unsubscribe link (``WINBACK_PUBLIC_URL`` set) the e-mail carries ``List-Unsubscribe:
<url>`` and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 2369, RFC 8058), so mail clients
offer their own unsubscribe button, which POSTs to the link.
"""

from __future__ import annotations

import binascii
import contextlib
import smtplib
import ssl
from email.header import Header
from email.utils import formataddr, formatdate, parseaddr

from winback.act.channels import PermanentError, Receipt, TransientError
from winback.act.outbox import Message
from winback.act.render import Rendered
from winback.config import Settings

__all__ = ["SMTPChannel", "build_email", "message_id"]


def message_id(idempotency_key: str) -> str:
    return f"<{idempotency_key}@winback>"


def _header(value: str) -> str:
    """A header value: as is when ASCII, else an RFC 2047 encoded word."""
    if value.isascii():
        return value
    return Header(value, "utf-8", maxlinelen=998).encode()


def _address(value: str) -> str:
    name, address = parseaddr(value)
    return formataddr((name, address), charset="utf-8") if name else address


def _qp(text: str) -> bytes:
    return binascii.b2a_qp(text.encode("utf-8"), istext=True).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def build_email(message: Message, rendered: Rendered, sender: str, date: str | None = None) -> bytes:
    """The e-mail of ``message`` as SMTP-ready bytes (CRLF lines): subject, a plain-text part and an HTML
    part (``multipart/alternative``, both quoted-printable UTF-8), its idempotency key as Message-ID.

    Written out directly rather than through :class:`email.message.EmailMessage`, whose header objects
    cost about 1 ms per message (the whole budget of a worker sending 500 a second). The boundary
    starts with ``=_``, which quoted-printable text cannot contain.
    """
    recipient = message.recipient
    if "\r" in recipient or "\n" in recipient:
        raise PermanentError(f"recipient {recipient!r}: a line break in an e-mail address")
    boundary = f"=_winback_{message.idempotency_key[-24:]}"
    head = [
        f"From: {_address(sender)}",
        f"To: {recipient}",
        f"Subject: {_header(rendered.subject or '')}",
        f"Date: {date or formatdate(usegmt=True)}",
        f"Message-ID: {message_id(message.idempotency_key)}",
        f"X-Winback-Message: {message.id}",
        "MIME-Version: 1.0",
    ]
    if rendered.unsubscribe_url:
        if any(c in rendered.unsubscribe_url for c in "\r\n<>"):
            raise PermanentError("unsubscribe URL: a line break or angle bracket in it")
        head += [
            f"List-Unsubscribe: <{rendered.unsubscribe_url}>",
            "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        ]
    text = _qp(rendered.text)
    part = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    if not rendered.html:
        head += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: quoted-printable"]
        return "\r\n".join(head).encode() + b"\r\n\r\n" + text + b"\r\n"
    head.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    marker = f"--{boundary}".encode()
    html_part = (
        b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    return b"".join([
        "\r\n".join(head).encode(), b"\r\n\r\n",
        marker, b"\r\n", part, text, b"\r\n",
        marker, b"\r\n", html_part, _qp(rendered.html), b"\r\n",
        marker, b"--\r\n",
    ])  # fmt: skip


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
        self._envelope_from = parseaddr(self.sender)[1] or self.sender

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
        data = build_email(message, rendered, self.sender)
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
