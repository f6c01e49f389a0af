"""`winback keys create` and `winback serve` as a user runs them: a real uvicorn process on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx2 as httpx
from tests.test_cli import WINBACK, run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_keys_are_printed_once_and_bad_scopes_refused(tmp_path: Path) -> None:
    made = run("keys", "create", "--scope", "write", "--label", "shop", "--json", home=tmp_path)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    assert key["key"].startswith(f"wbk_{key['key_id']}_")
    assert key["scope"] == "write"
    assert key["key"] not in (tmp_path / "state.db").read_bytes().decode("latin-1")  # only its hash
    bad = run("keys", "create", "--scope", "root", home=tmp_path)
    assert bad.returncode == 2
    assert "--scope 'root': expected one of read, write, admin" in bad.stderr
    gone = run("keys", "revoke", "nope", home=tmp_path)
    assert gone.returncode == 2


def test_serve_answers_on_loopback_and_stores_events(tmp_path: Path, database_url: str) -> None:
    key = json.loads(run("keys", "create", "--scope", "write", "--json", home=tmp_path,
                         WINBACK_DATABASE_URL=database_url).stdout)["key"]  # fmt: skip
    port = _free_port()
    env = {"WINBACK_HOME": str(tmp_path), "WINBACK_DATABASE_URL": database_url}
    server = subprocess.Popen(
        [*WINBACK, "serve", "--port", str(port)], env={**os.environ, **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read() if server.stdout else ""
            assert time.monotonic() < deadline, "winback serve did not become ready in 30 s"
            time.sleep(0.2)
        event = {"event_type": "view", "timestamp": "2024-05-01T10:00:00Z", "user_id": "u1"}
        reply = httpx.post(f"{base}/v1/events", json=event, headers={"Authorization": f"Bearer {key}"})
        assert reply.json() == {"received": 1, "stored": 1, "duplicates": 0}
        assert httpx.post(f"{base}/v1/events", json=event).status_code == 401
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "u1" not in output  # no personal data in the logs
    assert "401" in output  # the refused request is logged


def test_serve_refuses_the_default_secret_in_production(tmp_path: Path) -> None:
    refused = run("serve", home=tmp_path, WINBACK_ENVIRONMENT="production")
    assert refused.returncode == 2
    assert "WINBACK_SECRET_KEY" in refused.stderr


def test_the_worker_refuses_to_send_without_unsubscribe_links_in_production(tmp_path: Path) -> None:
    env = {"WINBACK_ENVIRONMENT": "production", "WINBACK_SECRET_KEY": "a" * 64}
    refused = run("worker", "--once", home=tmp_path, **env)
    assert refused.returncode == 2
    assert "WINBACK_PUBLIC_URL is not set" in refused.stderr
    default_secret = run("worker", "--once", home=tmp_path, WINBACK_ENVIRONMENT="production")
    assert default_secret.returncode == 2
    assert "WINBACK_SECRET_KEY" in default_secret.stderr
