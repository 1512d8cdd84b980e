"""Shared fixtures: a real sqlite file under tmp_path, fake Telegram and Crypto Pay
servers on 127.0.0.1, an App with a movable clock, its WSGI app called in process, and a
real waitress server. What the tests feed ClubBot is built in builders.py."""
from __future__ import annotations

import inspect
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from wsgiref.headers import Headers
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakes import FakeCryptoPay, FakeTelegram  # noqa: E402

import config as config_module  # noqa: E402
import db as db_module  # noqa: E402
from cryptopay import signature  # noqa: E402
from runtime import build_app  # noqa: E402
from tg import RateLimiter, make_bot  # noqa: E402

BOT_TOKEN = "123456:TEST-bot-token-SECRET-part"
PAY_TOKEN = "1234:TESTTOKEN"
CLUB_CHAT = -1001000000001
ADMIN = 9000
START = 1_800_000_000  # the fake clock's first second


class FakeClock:
    """Virtual time: the App's clock, and the rate limiter's, whose waits move it on."""

    def __init__(self, now: float = START):
        self.value = float(now)

    def now(self) -> int:
        return int(self.value)

    def monotonic(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds

    def sleep(self, seconds: float, stop=None) -> bool:
        self.value += seconds
        return bool(stop is not None and stop.is_set())


def free_port() -> int:
    """A port for a server in another process (ClubBot's, nginx), which must be told one;
    servers in this process bind port 0 instead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def telegram():
    fake = FakeTelegram(BOT_TOKEN)
    yield fake
    fake.close()


@pytest.fixture
def cryptopay():
    fake = FakeCryptoPay(PAY_TOKEN)
    yield fake
    fake.close()


@pytest.fixture
def env(tmp_path, telegram, cryptopay) -> dict[str, str]:
    """A complete, valid environment pointing at the fakes and at tmp_path."""
    return {
        "BOT_TOKEN": BOT_TOKEN,
        "CRYPTO_PAY_TOKEN": PAY_TOKEN,
        "CLUB_CHAT_IDS": str(CLUB_CHAT),
        "PLANS": "month:30d:5:USDT,year:365d:50:USDT,trial:3d:0:USDT",
        "ADMIN_IDS": str(ADMIN),
        "CRYPTO_PAY_API_URL": cryptopay.api_url,
        "TELEGRAM_API_URL": telegram.url,
        "WEBHOOK_PORT": str(free_port()),
        "DATABASE_PATH": str(tmp_path / "data" / "clubbot.db"),
        "LOG_FILE": str(tmp_path / "logs" / "clubbot.log"),
        "POLL_INTERVAL": "1s",
        "TELEGRAM_RATE": "1000",
    }


@pytest.fixture
def make_config(env):
    def make(**overrides: str) -> config_module.Config:
        return config_module.load({**env, **overrides}, env_file=None)
    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_app(make_config, clock, telegram):
    """Build Apps on the test database with these settings (a restart with an edited .env is
    one more call): a bot pointed at the fake Telegram, the budget on the movable clock (and
    the fake's dates of Stars payments on it too)."""
    made = []
    telegram.now = clock.now

    def make(**overrides: str):
        cfg = make_config(**overrides)
        application = build_app(cfg, clock=clock)
        application.bot = make_bot(cfg.bot_token, cfg.telegram_api_url)
        application.limiter = RateLimiter(cfg.telegram_rate, monotonic=clock.monotonic, sleep=clock.sleep)
        application.bot_username = "club_test_bot"
        made.append(application)
        return application

    yield make
    for application in made:
        application.stop.set()
        application.db.close()


@pytest.fixture
def app(make_app):
    """An App on a real database file, with a bot pointed at the fake Telegram."""
    return make_app()


@pytest.fixture
def server(app):
    """The WSGI app behind a real waitress server on 127.0.0.1; yields its base URL."""
    from webhook_server import ServerThread, create_server

    server = create_server(app, host="127.0.0.1", port=0)  # any free port: no race for one
    thread = ServerThread(server).start()
    yield f"http://127.0.0.1:{server.effective_port}"
    thread.stop(2)


class Answer:
    """An answer of the WSGI app called in process, read like a requests.Response."""

    def __init__(self, status: str, headers: list[tuple[str, str]], content: bytes):
        code, _, self.reason = status.partition(" ")
        self.status_code = int(code)
        self.headers = Headers(headers)  # names are case-insensitive, as in requests
        self.content = content

    def json(self):
        return json.loads(self.content)


class InProcess:
    """A WSGI app called in this process, as a server calls it (wsgiref's testing defaults), with
    wsgiref's validator checking both sides of the WSGI contract. For what the app decides
    (signatures, JSON, outcomes); what HTTP itself does goes through the `server` fixture.

    Each request runs on a thread of its own, as under waitress, whose database connection is
    closed at its end: a write the request left uncommitted fails the request, and is rolled
    back rather than seen by the test's reads (which go through the test thread's connection)."""

    def __init__(self, wsgi_app, app):
        self.wsgi = validator(wsgi_app)
        self.app = app  # its database is read at each request: tests may replace it

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                remote_addr: str = "127.0.0.1") -> Answer:
        environ = {"REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path, "QUERY_STRING": "",
                   "REMOTE_ADDR": remote_addr, "SERVER_PROTOCOL": "HTTP/1.1", "CONTENT_LENGTH": str(len(body)),
                   "wsgi.input": io.BytesIO(body)}
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key] = value
        setup_testing_defaults(environ)
        outcome: list = []
        thread = threading.Thread(target=self._serve, args=(environ, outcome), name="in-process-request")
        thread.start()
        thread.join(30)
        assert not thread.is_alive(), f"{method} {path}: no answer within 30 s"
        [answer] = outcome
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _serve(self, environ: dict, outcome: list) -> None:
        started: list[tuple[str, list]] = []

        def start_response(status, response_headers, exc_info=None):
            started.append((status, response_headers))

        try:
            result = self.wsgi(environ, start_response)
            try:
                content = b"".join(result)
            finally:
                result.close()
            [(status, response_headers)] = started
            assert not in_transaction(self.app.db), f"{environ['PATH_INFO']}: a transaction left open"
            outcome.append(Answer(status, response_headers, content))
        except BaseException as exc:  # raised again on the test's thread
            outcome.append(exc)
        finally:
            self.app.db.close()  # what is left uncommitted is rolled back

    def get(self, path: str, **kwargs) -> Answer:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: bytes = b"", **kwargs) -> Answer:
        return self.request("POST", path, body, **kwargs)

    def post_signed(self, path: str, body: bytes, token: str = PAY_TOKEN, headers: dict[str, str] | None = None,
                    **kwargs) -> Answer:
        """A POST signed as CryptoBot signs its webhooks (with `token`)."""
        signed = {"Content-Type": "application/json", "crypto-pay-api-signature": signature(token, body),
                  **(headers or {})}
        return self.post(path, body, headers=signed, **kwargs)


def in_transaction(db) -> bool:
    """Whether this thread's connection to `db` has a transaction open (False if it cannot be opened)."""
    try:
        return db.connect().in_transaction
    except sqlite3.Error:
        return False


@pytest.fixture
def client(app) -> InProcess:
    """The WSGI app of `app`, called in process: no socket, a short-lived thread per request."""
    from webhook_server import make_wsgi_app

    return InProcess(make_wsgi_app(app), app)


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def health_stays_quick(server: str, slow: list[socket.socket], seconds: float = 2) -> None:
    """While `slow` clients trickle a byte each, /health keeps answering within half a second."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock in slow:
            sock.sendall(b" ")
        started = time.monotonic()
        assert requests.get(server + "/health", timeout=5).status_code == 200
        assert time.monotonic() - started < 0.5
        time.sleep(0.1)  # the slow clients' pace


def wait_for(predicate, timeout: float = 10, step: float = 0.02, what: str | None = None):
    """Poll `predicate` until it returns something truthy, and return that. Fails after `timeout`
    seconds naming what it waited for (`what`, or the predicate's source line)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what or _source(predicate)}")
        time.sleep(step)


def _source(function) -> str:
    try:
        return inspect.getsource(function).strip()
    except (OSError, TypeError):
        return repr(function)


def post_signed(url: str, body: bytes, token: str = PAY_TOKEN, **kwargs) -> requests.Response:
    return requests.post(url, data=body, timeout=10, headers={
        "Content-Type": "application/json", "crypto-pay-api-signature": signature(token, body)}, **kwargs)


def start_process(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start `python <args>` from the project root with exactly this environment (plus PATH),
    and no terminal: nothing to read on stdin, as under systemd or in CI."""
    full_env = {"PATH": os.environ.get("PATH", ""), "PYTHONUNBUFFERED": "1", **env}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=full_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def bot(app):
    """The app's bot with ClubBot's handlers registered: fed updates, it answers as the bot does."""
    from handlers import register_handlers

    register_handlers(app.bot, app)
    return app.bot


@pytest.fixture
def all_read_first(app, monkeypatch):
    """Run calls on threads such that every one has read the invoice (before the write lock)
    before any of them writes. Returns each call's result or exception, in order."""
    entered: list[int] = []
    transaction = db_module.Database.transaction

    def counted(self):
        entered.append(1)  # past the read, about to wait for the write lock
        return transaction(self)

    monkeypatch.setattr(db_module.Database, "transaction", counted)

    def run(calls):
        results: list = [None] * len(calls)

        def one(i, call):
            try:
                results[i] = call()
            except Exception as exc:
                results[i] = exc

        threads = [threading.Thread(target=one, args=(i, call)) for i, call in enumerate(calls)]
        with app.db.write_lock:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 5
            while len(entered) < len(calls):
                assert time.monotonic() < deadline, f"only {len(entered)} of {len(calls)} read the invoice"
                time.sleep(0.005)
        for thread in threads:
            thread.join(5)
            assert not thread.is_alive()
        return results

    return run
