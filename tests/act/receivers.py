"""Receivers the outbox tests send to: a real SMTP server (aiosmtpd) and an HTTP webhook receiver.

Both deduplicate on the message's idempotency key, as a provider does (the SMTP ``Message-ID``, the
webhook ``Idempotency-Key``), and report what they saw: ``distinct`` keys, and ``duplicates`` (every
receipt of a key already received), so a test shows what happened, not only the deduplicated result.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from winback.act.channels.webhook import SIGNATURE_HEADER, verify


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _KeyCounts:
    """What a receiver got per idempotency key: how many distinct, how many repeats."""

    counts: Counter[str]

    @property
    def distinct(self) -> int:
        return len(self.counts)

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.counts.values())


class Inbox(_KeyCounts):
    """An aiosmtpd handler: keeps each e-mail once per Message-ID, counts repeats; ``fail`` holds SMTP
    answers to give (instead of accepting) to the next messages, e.g. ["451 4.3.0 try later"]."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.messages: dict[str, email.message.EmailMessage] = {}
        self.arrived: dict[str, float] = {}
        self.envelopes: dict[str, tuple[str, list[str]]] = {}
        self.fail: list[str] = []
        self.refused = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            if self.fail:
                self.refused += 1
                return self.fail.pop(0)
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            key = str(message["Message-ID"])
            self.counts[key] += 1
            if self.counts[key] == 1:
                self.messages[key] = message  # type: ignore[assignment]
                self.arrived[key] = time.time()
                self.envelopes[key] = (envelope.mail_from, list(envelope.rcpt_tos))
            return f"250 2.0.0 Ok: queued as Q{len(self.messages)}"


class SMTPServer:
    """aiosmtpd on a free loopback port, in a thread of the test process."""

    def __init__(self) -> None:
        self.inbox = Inbox()
        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> SMTPServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


class WebhookReceiver(_KeyCounts):
    """A local HTTP receiver of signed webhooks: checks each signature, keeps each Idempotency-Key once
    (answering a repeat with the first answer, as an idempotent API does) and counts repeats. ``fail``
    holds statuses to answer the next calls with, ``fail_to`` the same per recipient; ``delay_to`` makes
    a recipient's next calls that slow."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.bodies: dict[str, dict[str, Any]] = {}
        self.paths: dict[str, str] = {}
        self.bad_signatures = 0
        self.fail: list[int] = []
        self.fail_to: dict[str, list[int]] = {}  # per recipient ("to"): statuses for its next calls
        self.delay_to: dict[str, list[float]] = {}  # per recipient: how long its next calls take
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                to = str(json.loads(body).get("to"))
                with receiver.lock:
                    delays = receiver.delay_to.get(to)
                    delay = delays.pop(0) if delays else 0.0
                if delay:
                    time.sleep(delay)
                status, answer = receiver.receive(self.path, dict(self.headers), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that timed out and left before its answer: expected in the tests

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def receive(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        with self.lock:
            if not verify(self.secret, body, headers.get(SIGNATURE_HEADER)):
                self.bad_signatures += 1
                return 401, {"error": "bad signature"}
            document = json.loads(body)
            planned = self.fail_to.get(str(document.get("to")))
            if planned:
                return planned.pop(0), {"error": "failing on purpose"}
            if self.fail:
                return self.fail.pop(0), {"error": "failing on purpose"}
            key = headers.get("Idempotency-Key", "")
            self.counts[key] += 1
            if self.counts[key] == 1:
                self.bodies[key] = document
                self.paths[key] = path
            return 200, {"id": f"p-{key[-8:]}", "duplicate": self.counts[key] > 1}

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
