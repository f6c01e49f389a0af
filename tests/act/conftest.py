"""Outbox fixtures: a real SMTP server and a webhook receiver on loopback, settings pointing at them."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from winback.config import Settings, load_settings

_spec = importlib.util.spec_from_file_location("act_receivers", Path(__file__).with_name("receivers.py"))
assert _spec is not None
assert _spec.loader is not None
receivers = importlib.util.module_from_spec(_spec)
sys.modules["act_receivers"] = receivers
_spec.loader.exec_module(receivers)

SECRET = "test-webhook-secret"


@pytest.fixture
def smtp_server() -> Iterator[receivers.SMTPServer]:
    with receivers.SMTPServer() as server:
        yield server


@pytest.fixture
def webhook_receiver() -> Iterator[receivers.WebhookReceiver]:
    with receivers.WebhookReceiver(SECRET) as receiver:
        yield receiver


@pytest.fixture
def act_settings(
    database_url: str,
    tmp_path: Path,
    smtp_server: receivers.SMTPServer,
    webhook_receiver: receivers.WebhookReceiver,
) -> Settings:
    return load_settings(
        home=tmp_path / "home",
        database_url=database_url,
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        smtp_from="Shop <shop@example.com>",
        sms_webhook_url=webhook_receiver.url("/sms"),
        push_webhook_url=webhook_receiver.url("/push"),
        webhook_secret=SECRET,
        outbox_retry_seconds=0.05,
    )
