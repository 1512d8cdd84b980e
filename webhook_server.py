"""The HTTP side: GET /health and POST /webhook/cryptobot, a plain WSGI app under waitress.

Run alone (`python webhook_server.py`) it records payments and queues
messages in the database; the bot process sends them. It never needs Telegram.
"""
from __future__ import annotations

import sys

# Before any import that an older Python fails on: one line instead of a traceback (as in clubbot.py).
if sys.version_info < (3, 11):  # noqa: UP036 (for the Pythons that ruff's target leaves out)
    sys.exit(f"ClubBot needs Python 3.11 or newer; this is {'.'.join(map(str, sys.version_info[:3]))} "
             f"(see README: Deployment)")

import json
import logging
import re
import resource
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus

import waitress

from config import WEBHOOK_PATH
from cryptopay import parse_invoice, signature_matches
from db import Outcome
from payments import log_applied, note_unusable_webhook
from runtime import App

log = logging.getLogger("clubbot.http")

MAX_BODY = 64 * 1024
# waitress refuses anything larger on its own; up to it, the app answers 413 in JSON.
SERVER_MAX_BODY = 1024 * 1024
# Limits against slow and idle clients (a slowloris). Slots are cheap while idle (one file
# descriptor and a small object each), so there are many; the idle are closed soon; and the
# kernel holds the overflow. A descriptor per connection, two while a large body is spooled
# to a temporary file: the limit is kept within the process's descriptor limit (LimitNOFILE
# in systemd/*.service), with room left for the database, the logs and outgoing calls.
CONNECTION_LIMIT = 1000
FDS_RESERVED = 100
CHANNEL_TIMEOUT = 30  # seconds a connection may sit with no byte in either direction
CLEANUP_INTERVAL = 5  # seconds between looks for such connections
BACKLOG = 1024  # connections the kernel holds while every slot is taken
MAX_NESTING = 32  # JSON nesting a webhook may have (a Crypto Pay update has 3)
_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')  # strings (skipped whole) and brackets
HEALTH_PATH = "/health"
OK = json.dumps({"ok": True}).encode()  # the answer to every webhook taken, made once
_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}

StartResponse = Callable[..., object]


def _respond(start_response: StartResponse, status: int, body: dict | bytes, head: bool = False,
             headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
    start_response(_STATUS_LINES[status], [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(data))), *headers])
    return [] if head else [data]


def _error(start_response: StartResponse, status: int, message: str, **kwargs) -> list[bytes]:
    return _respond(start_response, status, {"error": message}, **kwargs)


def _read_body(environ: dict) -> bytes | None:
    """The request body, or None when it is larger than MAX_BODY."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH") or ""
    if length.strip():
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        if size > MAX_BODY:
            return None
        return stream.read(size) if size else b""
    data = stream.read(MAX_BODY + 1)
    return None if len(data) > MAX_BODY else data


def _nested_too_deep(body: bytes) -> bool:
    """Whether the JSON nests deeper than MAX_NESTING. The parser would recurse into it until
    RecursionError, leaving the thread at the edge of its stack; a real update nests 3 deep.
    Cheap for the usual body: only one with many brackets is looked at closely."""
    if body.count(b"[") + body.count(b"{") <= MAX_NESTING:
        return False
    depth = 0
    for token in _STRUCTURE.findall(body):
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def _valid_update(update: object) -> bool:
    return (isinstance(update, dict) and isinstance(update.get("update_type"), str)
            and isinstance(update.get("payload"), dict))


class WebhookApp:
    """The WSGI application: a route table from path to (methods, handler)."""

    def __init__(self, app: App):
        self.app = app
        self.token = app.config.crypto_pay_token
        self.routes: dict[str, tuple[tuple[str, ...], Callable[[dict, StartResponse], list[bytes]]]] = {
            HEALTH_PATH: (("GET", "HEAD"), self.health),
            WEBHOOK_PATH: (("POST",), self.webhook),
        }

    def __call__(self, environ: dict, start_response: StartResponse) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        head = method == "HEAD"
        try:
            if path not in self.routes:
                return _error(start_response, 404, "not found", head=head)
            methods, handler = self.routes[path]
            if method not in methods:  # HEAD on the webhook shows the route is there (curl -I)
                return _error(start_response, 405, f"use {methods[0]}", head=head,
                              headers=[("Allow", ", ".join(methods))])
            return handler(environ, start_response)
        except Exception:
            log.exception("%s %s failed", method, path)
            return _error(start_response, 500, "internal error")

    def health(self, environ: dict, start_response: StartResponse) -> list[bytes]:
        head = environ["REQUEST_METHOD"] == "HEAD"
        now = int(time.time())
        try:
            # One small read: the beats other processes wrote, which also shows the database answers.
            problems = self.app.heartbeats.problems(self.app.db, stopping=self.app.stop.is_set())
        except sqlite3.Error as exc:
            problems = [f"database: {exc}"]
        if problems:
            error = "; ".join(problems)
            log.error("health check failed: %s", error)
            return _respond(start_response, 503, {"status": "unhealthy", "timestamp": now,
                                                  "error": error}, head=head)
        return _respond(start_response, 200, {"status": "healthy", "timestamp": now}, head=head)

    def webhook(self, environ: dict, start_response: StartResponse) -> list[bytes]:
        """Size and signature first, over the raw bytes; only then is the body read as JSON.
        Each webhook is one log line: its arrival, its signature check, and what became of it."""
        client = environ.get("REMOTE_ADDR", "?")
        given = environ.get("HTTP_CRYPTO_PAY_API_SIGNATURE")
        size = environ.get("CONTENT_LENGTH") or "?"
        try:
            body = _read_body(environ)
        except ValueError:
            log.warning("webhook received from %s: bad Content-Length", client)
            return _error(start_response, 400, "bad Content-Length")
        if not given:
            log.warning("webhook received from %s (%s bytes): signature missing", client, size)
            return _error(start_response, 401, "missing crypto-pay-api-signature")
        if body is None:
            log.warning("webhook received from %s (%s bytes): body over %d bytes", client, size, MAX_BODY)
            return _error(start_response, 413, f"body over {MAX_BODY} bytes")
        if not signature_matches(self.token, body, given):
            log.warning("webhook received from %s (%s bytes): signature check failed (got %.8s...)",
                        client, size, given)
            return _error(start_response, 401, "bad signature")
        return self.signed(start_response, body, f"webhook received from {client} ({size} bytes): "
                                                 "signature check passed; ")

    def signed(self, start_response: StartResponse, body: bytes, arrival: str) -> list[bytes]:
        """A body CryptoBot signed: apply the payment it reports. `arrival` begins its log line."""
        if _nested_too_deep(body):
            return self.unusable(start_response, body, f"body is nested deeper than {MAX_NESTING}", arrival)
        try:
            update = json.loads(body)
        except (ValueError, RecursionError):
            return self.unusable(start_response, body, "body is not JSON", arrival)
        if not _valid_update(update):
            return self.unusable(start_response, body, "body is not a Crypto Pay update", arrival)
        if update["update_type"] != "invoice_paid":
            log.info("%supdate_type %.40s ignored", arrival, update["update_type"])
            return _respond(start_response, 200, {"ok": True, "ignored": True})
        try:
            invoice = parse_invoice(update["payload"])
        except ValueError as exc:
            return self.unusable(start_response, body, f"bad invoice: {exc}", arrival)
        if invoice.status != "paid":
            log.warning("%sinvoice_paid for invoice %s with status %s ignored", arrival, invoice.invoice_id,
                        invoice.status)
            return _respond(start_response, 200, {"ok": True, "ignored": True})
        app = self.app
        try:
            # The clock itself: read under the write lock, so paid_at follows the commit order.
            # An invoice of ours, even a duplicate, also clears the "webhooks are not arriving"
            # and "unusable webhook" alerts (payments.note_webhooks_missing, note_unusable_webhook) as it is recorded.
            result = app.db.apply_invoice(invoice, "webhook", app.now, app.config.admin_ids,
                                          app.config.referral_bonus)
        except sqlite3.OperationalError as exc:
            log.error("%sinvoice %s not applied, the database failed: %s", arrival, invoice.invoice_id, exc)
            return _error(start_response, 500, "database unavailable, retry later")
        log_applied(result, invoice.invoice_id, "webhook", arrival, to=log)
        if result.outcome in (Outcome.APPLIED, Outcome.MISMATCH):
            app.wake_sender()
        return _respond(start_response, 200, OK)

    def unusable(self, start_response: StartResponse, body: bytes, error: str, arrival: str) -> list[bytes]:
        """A correctly signed body comes from CryptoBot, which retries a 4xx for days and then
        disables the webhook: keep it for the owner, tell the admins once, answer 200."""
        try:
            record_id = self.app.db.record_unusable_webhook(body, error, self.app.now())
            note_unusable_webhook(self.app, error, record_id)
        except sqlite3.OperationalError as exc:
            log.error("%san unusable update (%s) was not recorded, the database failed: %s", arrival, error, exc)
            return _error(start_response, 500, "database unavailable, retry later")
        log.error("%sa correctly signed update cannot be used (%s); kept as unusable_webhooks record %s "
                  "and answered 200", arrival, error, record_id)
        return _respond(start_response, 200, {"ok": True, "ignored": True})


def make_wsgi_app(app: App) -> WebhookApp:
    return WebhookApp(app)


def connection_limit() -> int:
    """CONNECTION_LIMIT, or fewer if the process's descriptor limit cannot hold that many."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return CONNECTION_LIMIT
    fits = max(10, (soft - FDS_RESERVED) // 2)
    if fits < CONNECTION_LIMIT:
        log.warning("the open-files limit (%d) allows %d HTTP connections, not %d; raise it (LimitNOFILE, "
                    "ulimit -n) to %d", soft, fits, CONNECTION_LIMIT, 2 * CONNECTION_LIMIT + FDS_RESERVED)
        return fits
    return CONNECTION_LIMIT


def create_server(app: App, host: str | None = None, port: int | None = None):
    """A waitress server for the app, not yet running (call .run())."""
    config = app.config
    options = dict(
        host=host or config.webhook_host,
        port=config.webhook_port if port is None else port,
        threads=4,
        ident="clubbot",
        max_request_body_size=SERVER_MAX_BODY,
        connection_limit=connection_limit(),
        channel_timeout=CHANNEL_TIMEOUT,
        cleanup_interval=CLEANUP_INTERVAL,
        backlog=BACKLOG,
        # select() cannot watch descriptors numbered 1024 or more, which so many connections reach.
        asyncore_use_poll=True,
        clear_untrusted_proxy_headers=True,
    )
    if config.trusted_proxy:
        options.update(trusted_proxy=config.trusted_proxy, trusted_proxy_count=1,
                       trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto"})
    return waitress.create_server(make_wsgi_app(app), **options)


class ServerThread:
    """waitress in a background thread, with a graceful stop."""

    def __init__(self, server):
        self.server = server
        self.thread = threading.Thread(target=server.run, name="http", daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let requests in flight and already queued finish and flush, then close."""
        deadline = time.monotonic() + timeout
        self.server.accepting = False
        dispatcher = self.server.task_dispatcher
        # waitress's shutdown() ends its threads after their current task and leaves queued
        # ones unserved, so wait for the queue to drain first.
        while time.monotonic() < deadline and (dispatcher.queue or dispatcher.active_count):
            time.sleep(0.02)
        dispatcher.shutdown(cancel_pending=True, timeout=max(0.1, deadline - time.monotonic()))
        time.sleep(0.1)  # let the loop flush the last responses
        self.server.close()


def main(argv: list[str] | None = None) -> int:
    import clubbot  # the CLI owns config loading, logging and signals

    return clubbot.main(argv, clubbot.build_webhook_parser())


if __name__ == "__main__":
    sys.exit(main())
