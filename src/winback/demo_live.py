"""The live loop of ``winback demo`` (its last stage, or alone with ``winback demo --live-only``).

The batch stages show what winback learns from a history; this one shows the service doing its job as
events arrive. ``winback serve``, ``winback consume``, ``winback detect`` and ``winback worker`` run as
child processes, as in a deployment, on a private home with SQLite (``HOME/demo/live``, made afresh each
run), the shop's Redis (``WINBACK_REDIS_URL``; a stream of this run's own, deleted at the end) and a
local mailbox: an SMTP server (aiosmtpd) in a thread of this process that keeps what it receives. A
small simulated shop's last days are replayed as a live stream (:mod:`winback.sim.replay`: each session
600 times faster, so a 30-minute idle threshold is 3 seconds; the sessions' starts packed into about 20
seconds), most sessions through the Redis Stream and a quarter through ``POST /v1/events``. Customers'
profiles (address, consent) are put through the API first.

Then, as it happens: carts go idle and are decided by a flow of a demo catalogue (one reminder e-mail
0.002 h = 7.2 s after the cart's last event, no quiet hours), with the 10% holdout; the worker sends the
e-mails to the mailbox; the first recipient opens the e-mail (its pixel), clicks its tracked link and
buys the cart, through the service's real endpoints; the order is attributed to the message
(:func:`winback.act.attribution.attribute_purchases`), and once the outcomes' window (20 s here) has
closed the detector records the decision's outcome with its attributed revenue.

Whatever happens -- success, an error, Ctrl-C, SIGTERM -- the child processes are stopped (SIGTERM, then
SIGKILL after a grace period); should this process be killed outright, they stop themselves
(:mod:`winback.lifeline`). Without a reachable Redis the stage is skipped with a message.
"""

from __future__ import annotations

import email
import email.policy
import html
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from rich.console import Console
from rich.padding import Padding
from rich.table import Table

from winback.config import Settings
from winback.errors import WinbackError
from winback.lifeline import PARENT_PID
from winback.sim.replay import Replay

__all__ = ["LiveOptions", "Mailbox", "Services", "redis_problem", "run_live"]

#: The demo catalogue's flow: the default catalogue's caps, no quiet hours (the demo runs at any hour).
FLOW = "live-demo"
#: Where the e-mails' "Return to your cart" link leads (through the tracked redirect).
SHOP_URL = "https://shop.example/cart"


@dataclass(frozen=True)
class LiveOptions:
    """The size and pace of the live stage (the defaults: 36-46 s on a busy 2-core machine)."""

    customers: int = 500
    days: int = 3  # of the shop's life replayed
    seconds: float = 20.0  # the replay's length
    speed: float = 600.0  # of time within a session
    idle_minutes: float = 30.0  # the carts' idle threshold in the shop's time (3 s at 600x)
    send_delay_hours: float = 0.002  # 7.2 s after abandonment
    window_seconds: float = 20.0  # the outcomes' window
    http_share: float = 0.25  # of sessions sent through POST /v1/events, the rest through the stream
    drain_seconds: float = 40.0  # longest wait after the stream for the last sends and the outcome
    start_seconds: float = 90.0  # longest wait for the services to be ready


def redis_problem(url: str) -> str | None:
    """Why the Redis at ``url`` cannot be used (None: it answers a PING within a second)."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as error:
        return str(error) or type(error).__name__
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the mailbox -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One e-mail the mailbox got: when (wall clock), the envelope, the parsed message."""

    at: float
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def key(self) -> str:
        """The outbox's idempotency key, which the worker sends as ``Message-ID: <key@winback>``."""
        return str(self.message["Message-ID"]).strip().strip("<>").split("@")[0]

    def html(self) -> str:
        part = self.message.get_body(("html",))
        return str(part.get_content()) if part is not None else ""


class Mailbox:
    """A local SMTP server (aiosmtpd on a free loopback port, in a thread of this process) that keeps every
    e-mail it is sent, as a shop's test inbox would."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = _free_port()
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd's)
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self._received.append(Received(time.time(), envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 2.0.0 Ok: kept in the demo mailbox"

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def __enter__(self) -> Mailbox:
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._controller.stop()


# -- the services ------------------------------------------------------------------------------------------


class Services:
    """``winback`` commands as child processes of this one, each logging to ``logs/<name>.log``; stopped
    together by :meth:`stop` (SIGTERM, then SIGKILL after ``grace`` seconds), which ``with`` calls
    whatever happened."""

    def __init__(self, env: dict[str, str], logs: Path, cwd: Path) -> None:
        self.env = env
        self.logs = logs
        self.cwd = cwd
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.exit_codes: dict[str, int | None] = {}

    def start(self, name: str, *args: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "winback.cli", *args],
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # its own session: a Ctrl-C in the terminal reaches this process, which stops them in turn
                start_new_session=os.name == "posix",
            )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check(self) -> None:
        """Raise if a service has exited (with the end of its log)."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = "\n".join(self.log(name).strip().splitlines()[-8:])
                raise WinbackError(
                    f"winback {name} exited with code {process.returncode}; the end of "
                    f"{self.logs / (name + '.log')}:\n{tail}"
                )

    def wait_ready(self, ready: dict[str, Callable[[], bool]], timeout: float) -> None:
        """Wait until every ``ready[name]()`` is true; raise after ``timeout`` seconds or if one exits."""
        waiting = dict(ready)
        deadline = time.monotonic() + timeout
        while waiting:
            self.check()
            waiting = {name: test for name, test in waiting.items() if not test()}
            if waiting and time.monotonic() > deadline:
                raise WinbackError(
                    f"{', '.join('winback ' + n for n in waiting)} not ready after {timeout:g} s "
                    f"(see {self.logs}/)"
                )
            if waiting:
                time.sleep(0.1)

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}

    def stop(self, grace: float = 15.0) -> dict[str, int | None]:
        """SIGTERM every service still running, wait up to ``grace`` seconds, SIGKILL what is left; the
        exit codes (negative: the signal that ended it)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for name, process in self.processes.items():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            self.exit_codes[name] = process.returncode
        return dict(self.exit_codes)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the service's HTTP API and the stream ---------------------------------------------------------------


class Api:
    """Calls to the service on loopback (a connection per call: the stage makes few)."""

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(
        self, method: str, path: str, body: Any = None, *, auth: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            data = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=data, headers=self.headers if auth else {})
            reply = connection.getresponse()
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        finally:
            connection.close()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, _, data = self.call(method, path, body)
        if status != 200:
            raise WinbackError(f"{method} {path}: {status} {data[:300].decode(errors='replace')}")
        return json.loads(data)

    def ready(self) -> bool:
        try:
            return self.call("GET", "/readyz", auth=False)[0] == 200
        except OSError:
            return False


class Publisher(threading.Thread):
    """Sends the replay's events when their time comes: every ``tick`` seconds the due ones, as one
    Redis Stream entry (``events``: a JSON list) and one ``POST /v1/events`` batch."""

    def __init__(
        self, stream: Replay, api: Api, redis_url: str, stream_name: str, *, tick: float = 0.05
    ) -> None:
        super().__init__(name="winback-demo-publisher", daemon=True)
        import redis

        self.stream = stream
        self.api = api
        self.client = redis.Redis.from_url(redis_url)
        self.stream_name = stream_name
        self.tick = tick
        self.stop = threading.Event()
        self.start_wall = datetime.now(UTC)
        self.start_clock = time.monotonic()
        self.sent = {"redis": 0, "http": 0}
        self.done = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.start_wall, self.start_clock = datetime.now(UTC), time.monotonic()
            while self.done < len(self.stream) and not self.stop.is_set():
                elapsed = time.monotonic() - self.start_clock
                due = list(self.stream.due(self.done, elapsed))
                http = [self.stream.stamped(i, self.start_wall) for i in due if self.stream.http[i]]
                redis = [self.stream.stamped(i, self.start_wall) for i in due if not self.stream.http[i]]
                if redis:
                    self.client.xadd(self.stream_name, {"events": json.dumps(redis)})
                if http:
                    stored = self.api.json("POST", "/v1/events", http)
                    if stored["received"] != len(http):
                        raise WinbackError(f"POST /v1/events: {stored}")
                self.sent["redis"] += len(redis)
                self.sent["http"] += len(http)
                self.done += len(due)
                self.stop.wait(self.tick)
        except BaseException as error:  # reported by the stage
            self.error = error
        finally:
            self.client.close()

    @property
    def finished(self) -> bool:
        return self.done >= len(self.stream) or self.error is not None


# -- reading the service's database --------------------------------------------------------------------


def _state(engine: sa.Engine) -> dict[str, Any]:
    """What the services have done so far, from their database."""
    from winback.serve.db import carts, decisions, events, outbox

    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(sa.func.count()).select_from(events).where(events.c.event_id.like("sim-%"))
        ).scalar_one()
        cart_status: dict[str, int] = dict(
            connection.execute(
                sa.select(carts.c.status, sa.func.count()).where(carts.c.n_items > 0).group_by(carts.c.status)
            ).all()
        )
        waiting = connection.execute(
            sa.select(sa.func.count())
            .select_from(carts)
            .where(carts.c.status == "open", carts.c.due_at.is_not(None))
        ).scalar_one()
        decided = connection.execute(
            sa.select(
                sa.func.count(),
                sa.func.sum(sa.case((decisions.c.holdout, 1), else_=0)),
                sa.func.sum(sa.case((decisions.c.message_key.is_not(None), 1), else_=0)),
            )
        ).one()
        messages: dict[str, int] = dict(
            connection.execute(sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)).all()
        )
    return {
        "events": int(stored),
        "carts": {str(k): int(v) for k, v in cart_status.items()},
        "carts_waiting": int(waiting),
        "decided": int(decided[0] or 0),
        "holdout": int(decided[1] or 0),
        "messaged": int(decided[2] or 0),
        "outbox": {str(k): int(v) for k, v in messages.items()},
    }


def _decisions(engine: sa.Engine) -> list[dict[str, Any]]:
    from winback.serve.db import carts, decisions, outbox

    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                decisions.c.decision_id, decisions.c.cart_id, decisions.c.user_id, decisions.c.decided_at,
                decisions.c.due_at, decisions.c.action, decisions.c.propensity, decisions.c.holdout,
                decisions.c.reasons, decisions.c.message_key, decisions.c.outcome_observed_at,
                decisions.c.recovered, decisions.c.revenue, decisions.c.attributed_revenue,
                carts.c.n_items, carts.c.value, outbox.c.status.label("message_status"),
            )
            .select_from(
                decisions.outerjoin(carts, carts.c.cart_id == decisions.c.cart_id).outerjoin(
                    outbox, outbox.c.idempotency_key == decisions.c.message_key
                )
            )
            .order_by(decisions.c.decided_at)
        ).mappings()  # fmt: skip
        return [dict(r) for r in rows]


# -- the stage -------------------------------------------------------------------------------------------


@dataclass
class _Click:
    """The first recipient's visit: the e-mail opened, its link clicked, the cart bought."""

    message_id: int
    key: str
    user_id: str
    cart_id: str
    recipient: str
    subject: str
    opened: int
    clicked: int
    location: str
    order_id: str
    revenue: float
    at: float


def _catalogue(path: Path, options: LiveOptions) -> None:
    delay = f"{options.send_delay_hours:g}h"
    path.write_text(
        "# The live demo's catalogue: the default's actions, channels and caps, no quiet hours (the demo\n"
        "# runs at any hour), and one flow whose reminder goes out within seconds of abandonment.\n"
        "[limits]\nmax_coupon = 15\n\n[limits.frequency_cap_hours]\nemail = 16\nsms = 24\npush = 24\n\n"
        f'[flows.{FLOW}]\ndescription = "One reminder e-mail {delay} after abandonment."\n'
        f'steps = ["reminder/email/{delay}"]\n'
    )


def _open_click_buy(api: Api, engine: sa.Engine, received: Received) -> _Click:
    """The recipient of ``received`` opens it (the pixel), clicks its tracked link (a real GET of the
    redirect) and buys the cart it was about (``POST /v1/events``: one purchase event per item)."""
    from winback.serve.db import outbox

    with engine.connect() as connection:
        row = connection.execute(
            sa.select(outbox.c.id, outbox.c.user_id, outbox.c.cart_id, outbox.c.payload).where(
                outbox.c.idempotency_key == received.key
            )
        ).one()
    body = received.html()
    pixel = re.search(r'<img src="([^"]*/t/o/[^"]+)"', body)
    link = re.search(r'href="([^"]*/t/c/[^"]+)"', body)
    if pixel is None or link is None:
        raise WinbackError(f"the e-mail to {received.recipients[0]} has no tracked link or pixel")
    opened = api.call("GET", urlsplit(html.unescape(pixel.group(1))).path, auth=False)[0]
    clicked, headers, _ = api.call("GET", urlsplit(html.unescape(link.group(1))).path, auth=False)
    items = json.loads(row.payload)["cart"]["items"]
    order = f"live-order-{row.id}"
    now = datetime.now(UTC).isoformat()
    purchase = [
        {"event_id": f"{order}-{i}", "event_type": "purchase", "timestamp": now, "user_id": row.user_id,
         "session_id": f"{row.cart_id}-return", "product_id": item["product_id"],
         "price": item.get("price") or 0.0, "quantity": int(item.get("quantity") or 1), "order_id": order,
         "currency": "USD"}
        for i, item in enumerate(items)
    ]  # fmt: skip
    api.json("POST", "/v1/events", purchase)
    revenue = sum(float(e["price"]) * int(e["quantity"]) for e in purchase)
    return _Click(
        row.id, received.key, row.user_id, row.cart_id or "", received.recipients[0],
        str(received.message["Subject"]), opened, clicked, headers.get("location", ""), order,
        round(revenue, 2), time.time(),
    )  # fmt: skip


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM to this process unwinds like Ctrl-C (so the services are stopped), while the stage runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _since(start: float, at: float) -> str:
    return f"+{at - start:.1f} s"


def _wrapped(text: str, indent: str, width: int = 104) -> str:
    """``text`` wrapped at ``width``, its lines after the first indented two more than ``indent``."""
    return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent + "  ")


def run_live(
    settings: Settings,
    console: Console,
    *,
    seed: int,
    options: LiveOptions | None = None,
    number: str = "",
) -> dict[str, Any]:
    """Run the live stage (see the module docstring); print as it goes; return a JSON-ready summary
    (``{"skipped": reason}`` without a reachable Redis)."""
    options = options or LiveOptions()
    label = f"{number}. " if number else ""
    indent = " " * len(label)
    console.print(
        f"{label}the live loop: winback serve, consume, detect and worker as processes on a shop's live "
        f"event stream,\n{indent}e-mails in a local mailbox, a click, and a purchase attributed to its e-mail"
    )
    problem = redis_problem(settings.redis_url)
    if problem is not None:
        console.print(
            f"{indent}skipped: no Redis at {settings.redis_url} ({problem}).\n"
            f"{indent}Start one (e.g. `redis-server`, or `docker run -p 6379:6379 redis`) or set "
            f"WINBACK_REDIS_URL,\n{indent}then run `winback demo --live-only`."
        )
        return {"skipped": f"no Redis at {settings.redis_url}: {problem}"}
    with _sigterm_as_interrupt():
        return _run(settings, console, seed, options, indent)


def _run(
    settings: Settings, console: Console, seed: int, options: LiveOptions, indent: str
) -> dict[str, Any]:
    from winback.serve.db import make_engine, upgrade
    from winback.serve.keys import create_key
    from winback.sim import simulate
    from winback.sim.replay import replay

    began = time.monotonic()
    home = settings.home / "demo" / "live"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    url = f"sqlite:///{(home / 'state.db').resolve()}"
    shop = simulate(customers=options.customers, days=options.days, seed=seed)
    stream = replay(shop.events, seconds=options.seconds, speed=options.speed, http_share=options.http_share)
    idle_seconds = options.idle_minutes * 60 / options.speed
    console.print(
        f"{indent}a shop of {options.customers:,} customers (seed {seed}): {len(stream):,} events in "
        f"{stream.sessions:,} sessions over {options.days} days,\n"
        f"{indent}replayed in {stream.seconds:.0f} s: each session {options.speed:g}x faster (the "
        f"{options.idle_minutes:g}-minute idle threshold is {idle_seconds:g} s), their starts "
        f"{stream.packing:,.0f}x"
    )
    engine = make_engine(url)
    run_id = secrets.token_hex(4)
    stream_name, dead = f"winback:demo:{run_id}:events", f"winback:demo:{run_id}:dead"
    summary: dict[str, Any] = {"home": str(home), "database": url, "stream": stream_name}
    try:
        upgrade(engine)  # once, before the services start (each would otherwise migrate at once)
        key, _ = create_key(engine, "write", "live demo")
        _catalogue(home / "catalogue.toml", options)
        with Mailbox() as mailbox:
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            # the services' settings, all from here: none of this shell's WINBACK_* (a production
            # database, say), and no winback.toml (they run in the private home, which has none)
            env = {k: v for k, v in os.environ.items() if not k.startswith("WINBACK_")}
            env.update(
                {
                    "WINBACK_HOME": str(home),
                    "WINBACK_DATABASE_URL": url,
                    "WINBACK_ENVIRONMENT": "development",
                    "WINBACK_SECRET_KEY": secrets.token_hex(32),
                    "WINBACK_REDIS_URL": settings.redis_url,
                    "WINBACK_REDIS_STREAM": stream_name,
                    "WINBACK_REDIS_GROUP": "winback-demo",
                    "WINBACK_REDIS_DEAD_LETTER": dead,
                    "WINBACK_SMTP_HOST": "127.0.0.1",
                    "WINBACK_SMTP_PORT": str(mailbox.port),
                    "WINBACK_SMTP_FROM": "Demo Shop <shop@demo.example>",
                    "WINBACK_PUBLIC_URL": base,
                    "WINBACK_SHOP_URL": SHOP_URL,
                    PARENT_PID: str(os.getpid()),
                }
            )
            window_days = float(f"{options.window_seconds / 86_400:.3g}")
            commands = {
                "serve": ["serve", "--port", str(port)],
                "consume": ["consume", "--consumer", "demo-1", "--block-ms", "200"],
                "detect": [
                    "detect", "--policy", FLOW, "--catalogue", "catalogue.toml", "--idle-minutes",
                    f"{options.idle_minutes / options.speed:g}", "--outcomes-every", "1", "--window-days",
                    f"{window_days:g}",
                ],
                "worker": ["worker", "--catalogue", "catalogue.toml", "--poll-interval", "0.2"],
            }  # fmt: skip
            with Services(env, home / "logs", home) as services:
                started = time.monotonic()
                for name, args in commands.items():
                    services.start(name, *args)
                api = Api(port, key)
                services.wait_ready(
                    {
                        "serve": api.ready,
                        "consume": lambda: _consuming(settings.redis_url, stream_name),
                        "detect": lambda: "ready" in services.log("detect"),
                        "worker": lambda: "ready" in services.log("worker"),
                    },
                    options.start_seconds,
                )
                console.print(
                    f"{indent}started in {time.monotonic() - started:.1f} s, in {home}/ (SQLite state.db, "
                    "logs/):"
                )
                for args in commands.values():
                    console.print(_wrapped("winback " + " ".join(args), indent + "  "))
                console.print(
                    f"{indent}the stream {stream_name}; the mailbox: SMTP on 127.0.0.1:{mailbox.port}; the "
                    f"flow {FLOW}:\n{indent}one reminder e-mail {options.send_delay_hours * 3600:g} s after "
                    f"the cart's last event; outcomes over {window_days * 86_400:.0f} s"
                )
                profiles = _profiles(api, shop.customers, {e["user_id"] for e in stream.events})
                console.print(
                    f"{indent}{profiles['put']} customers' profiles put (PUT /v1/customers/{{id}}): "
                    f"{profiles['consent']} consent to e-mail; streaming..."
                )
                summary.update(
                    _stream_and_watch(
                        console, indent, options, stream, services, api, engine, mailbox,
                        settings.redis_url, stream_name,
                    )
                )  # fmt: skip
                summary["attribution"] = _attribution(console, indent, engine, summary["click"], window_days)
                summary["exit_codes"] = services.stop()
                summary["pids"] = services.pids
                summary["said"] = {n: _last_line(services.log(n)) for n in ("consume", "detect", "worker")}
                codes = summary["exit_codes"]
                clean = codes.get("serve") in (0, -signal.SIGTERM) and "Finished server process" in (
                    services.log("serve")
                )
                console.print(
                    _wrapped(
                        "stopped with SIGTERM: exit codes "
                        + ", ".join(f"{name} {code}" for name, code in codes.items())
                        + (" (uvicorn re-raises the signal after its clean shutdown)" if clean else "")
                        + "; their last words:",
                        indent,
                    )
                )
                for name, line in summary["said"].items():
                    console.print(_wrapped(f"winback {name}: {line}", indent + "  "))
    finally:
        engine.dispose()
        _drop_stream(settings.redis_url, stream_name, dead)
    summary["seconds"] = round(time.monotonic() - began, 1)
    console.print(f"{indent}the live stage took {summary['seconds']:.0f} s")
    return summary


def _consuming(redis_url: str, stream_name: str) -> bool:
    """Whether ``winback consume`` has made its group and reads (a consumer in the group)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        groups: list[dict[str, Any]] = client.xinfo_groups(stream_name)  # type: ignore[assignment]
    except redis.ResponseError:  # no stream yet
        return False
    finally:
        client.close()
    return any(int(g.get("consumers", 0)) > 0 for g in groups)


def _drop_stream(redis_url: str, *keys: str) -> None:
    """Delete this run's stream and dead letters: the demo leaves nothing in the shop's Redis."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
    try:
        client.delete(*keys)
    except (redis.RedisError, OSError):
        pass  # a Redis gone meanwhile: nothing of this run's own is worth failing for
    finally:
        client.close()


def _last_line(text: str) -> str:
    """A command's closing summary: the last line of its log that is not a log record."""
    lines = [line for line in text.strip().splitlines() if line.strip() and " INFO " not in line]
    return lines[-1].strip() if lines else "(nothing)"


def _profiles(api: Api, customers: Any, users: set[str]) -> dict[str, Any]:
    """A profile for each customer in the stream: an e-mail address, and the UTC offset and e-mail
    consent the simulator drew."""
    rows = customers[customers["user_id"].isin(users)]
    consent = 0
    for row in rows.itertuples():
        body = {
            "email": f"{row.user_id}@example.com",
            "utc_offset_minutes": round(float(row.utc_offset_hours) * 60),
            "consent": {"email": bool(row.consent_email)},
        }
        api.json("PUT", f"/v1/customers/{row.user_id}", body)
        consent += bool(row.consent_email)
    return {"put": len(rows), "consent": consent}


def _stream_and_watch(
    console: Console,
    indent: str,
    options: LiveOptions,
    stream: Replay,
    services: Services,
    api: Api,
    engine: sa.Engine,
    mailbox: Mailbox,
    redis_url: str,
    stream_name: str,
) -> dict[str, Any]:
    """Stream the replay and watch the loop: progress every 5 s; the first e-mail opened, clicked and its
    cart bought; then wait for the last carts, sends and the clicked decision's outcome."""
    publisher = Publisher(stream, api, redis_url, stream_name)
    publisher.start()
    start = time.time()
    click: _Click | None = None
    next_report = time.monotonic() + 5
    drained_by: float | None = None
    try:
        while True:
            services.check()
            if publisher.error is not None:
                raise WinbackError(f"streaming the events failed: {publisher.error}") from publisher.error
            received = mailbox.received
            if click is None and received:
                first = received[0]
                console.print(
                    f"{indent}{_since(start, first.at):>7}  the first e-mail arrives: to "
                    f'{first.recipients[0]}, "{first.message["Subject"]}"'
                )
                click = _open_click_buy(api, engine, first)
                console.print(
                    f"{indent}{_since(start, click.at):>7}  opened (GET /t/o/...: {click.opened}), clicked "
                    f"(GET /t/c/...: {click.clicked} to {click.location}),\n{indent}{'':>7}  its cart bought "
                    f"(POST /v1/events: order {click.order_id}, {click.revenue:.2f} USD)"
                )
            state = _state(engine)
            if time.monotonic() >= next_report:
                next_report += 5
                console.print(f"{indent}{_since(start, time.time()):>7}  {_progress(state)}")
            if publisher.finished:
                drained_by = drained_by or time.monotonic() + options.drain_seconds
                if _settled(state, len(stream), engine, click) or time.monotonic() > drained_by:
                    break
            time.sleep(0.2)
    finally:
        publisher.stop.set()
        publisher.join(timeout=10)
    state = _state(engine)
    settled = _settled(state, len(stream), engine, click)
    console.print(
        f"{indent}{_since(start, time.time()):>7}  {_progress(state)}"
        + ("" if settled else f" (stopped waiting after {options.drain_seconds:g} s)")
    )
    console.print(
        f"{indent}{state['events']:,} of the {len(stream):,} events stored: {publisher.sent['redis']:,} sent "
        f"through the Redis Stream, {publisher.sent['http']:,} through POST /v1/events"
    )
    decisions = _decisions(engine)
    _show_decisions(console, indent, decisions, start)
    received = mailbox.received
    _show_mailbox(console, indent, received, engine, start)
    return {
        "events": {"replayed": len(stream), "stored": state["events"], **publisher.sent},
        "state": state,
        "mailbox": len(received),
        "recipients": len({r for m in received for r in m.recipients}),
        "subjects": dict(Counter(str(m.message["Subject"]) for m in received)),
        "decisions": len(decisions),
        "actions": dict(Counter(_kind(d) for d in decisions)),
        "holdout": sum(bool(d["holdout"]) for d in decisions),
        "click": asdict(click) if click else None,
        "settled": settled,
    }


def _progress(state: dict[str, Any]) -> str:
    carts, outbox = state["carts"], state["outbox"]
    return (
        f"{state['events']:,} events stored; carts {carts.get('open', 0)} open, "
        f"{carts.get('purchased', 0)} bought, {carts.get('decided', 0)} abandoned "
        f"({state['holdout']} holdout); e-mails {outbox.get('sent', 0)} sent"
        + (f", {outbox['cancelled']} cancelled" if outbox.get("cancelled") else "")
    )


def _settled(state: dict[str, Any], replayed: int, engine: sa.Engine, click: _Click | None) -> bool:
    """Everything streamed is stored, no cart waits for its threshold, no message for its send time, and
    the clicked decision (if any) has its outcome."""
    if state["events"] < replayed or state["carts_waiting"]:
        return False
    if state["outbox"].get("scheduled", 0) or state["outbox"].get("claimed", 0):
        return False
    if click is None:
        return True
    from winback.serve.db import decisions

    with engine.connect() as connection:
        observed = connection.execute(
            sa.select(decisions.c.outcome_observed_at).where(decisions.c.message_key == click.key)
        ).scalar()
    return observed is not None


def _kind(decision: dict[str, Any]) -> str:
    """The decision's action, with why nothing was sent: the holdout, or what the guardrails said."""
    if decision["holdout"]:
        return "nothing (holdout)"
    if decision["message_key"]:
        return str(decision["action"])
    for reason in json.loads(decision["reasons"] or "[]"):
        found = re.search(r"refused by the guardrails \((.*)\)", str(reason))
        if found:
            return f"nothing ({found.group(1)})"
    return str(decision["action"])


def _show_decisions(console: Console, indent: str, decisions: list[dict[str, Any]], start: float) -> None:
    from rich import box

    from winback.act.outbox import as_utc

    if not decisions:
        console.print(f"{indent}no cart was abandoned")
        return
    kinds = Counter(_kind(d) for d in decisions)
    console.print(
        _wrapped(
            f"{len(decisions)} carts abandoned, each decided at its threshold: "
            + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()),
            indent,
        )
    )
    # a few of each kind: messaged, held out, refused by a guardrail
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in decisions:
        by_kind.setdefault(
            "holdout" if d["holdout"] else "message" if d["message_key"] else "none", []
        ).append(d)
    shown = sorted(
        by_kind.get("message", [])[:3] + by_kind.get("holdout", [])[:2] + by_kind.get("none", [])[:2],
        key=lambda d: d["decided_at"],
    )
    table = Table(
        "decided", "customer", "cart", "items", "value", "action", "propensity", "message",
        box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1),
    )  # fmt: skip
    for d in shown:
        kind = _kind(d)
        table.add_row(
            _since(start, as_utc(d["decided_at"]).timestamp()),
            str(d["user_id"]),
            str(d["cart_id"]),
            str(d["n_items"] or ""),
            f"{d['value']:.2f}" if d["value"] is not None else "",
            kind,
            f"{d['propensity']:.2f}" if d["propensity"] is not None else "",
            str(d["message_status"] or ""),
        )
    console.print(Padding(table, (0, 0, 0, len(indent)), expand=False))


def _show_mailbox(
    console: Console, indent: str, received: list[Received], engine: sa.Engine, start: float
) -> None:
    from winback.serve.db import outbox

    with engine.connect() as connection:
        statuses = Counter(
            (row.status, row.last_error if row.status == "cancelled" else None)
            for row in connection.execute(sa.select(outbox.c.status, outbox.c.last_error))
        )
    recipients = len({r for m in received for r in m.recipients})
    console.print(
        _wrapped(
            f"the mailbox holds {len(received)} e-mails to {recipients} customers; the outbox: "
            + ", ".join(
                f"{n} {status}" + (f" at send time ({why})" if why else "")
                for (status, why), n in sorted(statuses.items(), key=lambda x: (x[0][0], x[0][1] or ""))
            ),
            indent,
        )
    )
    for message in received[:2]:
        console.print(
            f"{indent}  {_since(start, message.at):>7}  From: {message.message['From']}  To: "
            f"{message.recipients[0]}\n{indent}  {'':>7}  Subject: {message.message['Subject']}"
        )


def _attribution(
    console: Console, indent: str, engine: sa.Engine, click: dict[str, Any] | None, window_days: float
) -> dict[str, Any]:
    """The clicked order's attribution (:func:`~winback.act.attribution.attribute_purchases`, read back
    from the service's database) and the outcome the detector recorded for its decision."""
    from winback.act.attribution import attribute_purchases
    from winback.serve.db import decisions

    found = attribute_purchases(engine, window_days=window_days)
    done: dict[str, Any] = {
        "orders": len(found),
        "attributed": sum(a.message_id is not None for a in found),
        "order": None,
        "outcome": None,
    }
    if click is None:
        console.print(f"{indent}no e-mail arrived, so nothing was clicked or bought")
        return done
    ours = next((a for a in found if a.order_id == click["order_id"]), None)
    if ours is None or ours.message_id is None or ours.sent_at is None:
        console.print(f"{indent}the order {click['order_id']} was NOT attributed to its e-mail")
        return done
    done["order"] = {
        "order_id": ours.order_id, "revenue": ours.revenue, "message_id": ours.message_id,
        "decision_id": ours.decision_id, "sent_at": ours.sent_at.isoformat(),
    }  # fmt: skip
    others = done["attributed"] - 1
    console.print(
        _wrapped(
            f"attribution (last touch, {window_days * 86_400:.0f} s window): order {ours.order_id} "
            f"({ours.revenue:.2f} USD) -> message {ours.message_id}, sent "
            f"{(ours.ordered_at - ours.sent_at).total_seconds():.1f} s before it"
            + (f"; {others} simulated order(s) followed an e-mail too" if others else ""),
            indent,
        )
    )
    with engine.connect() as connection:
        outcome = connection.execute(
            sa.select(
                decisions.c.action, decisions.c.outcome_observed_at, decisions.c.recovered,
                decisions.c.revenue, decisions.c.attributed_revenue,
            ).where(decisions.c.message_key == click["key"])
        ).one_or_none()  # fmt: skip
    if outcome is None or outcome.outcome_observed_at is None:
        console.print(f"{indent}  the decision's outcome is not recorded yet (its window has not closed)")
        return done
    done["outcome"] = {
        "recovered": bool(outcome.recovered), "revenue": outcome.revenue,
        "attributed_revenue": outcome.attributed_revenue,
    }  # fmt: skip
    console.print(
        f"{indent}  its decision's outcome, recorded by the detector when the window closed: recovered "
        f"{bool(outcome.recovered)},\n{indent}  revenue {outcome.revenue:.2f}, attributed revenue "
        f"{outcome.attributed_revenue:.2f} (`winback sync` takes it to the decision log)"
    )
    return done
