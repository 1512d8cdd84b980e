"""The outbox engine: the work queued in the database, done through the Bot API at least once
per row, in order of priority, on a few lanes side by side; retried, or given up, as its
failure says.

The engine knows no kind of work by name: KINDS holds one plain function per kinds.Kind
(messages.py says things, access.py lets members in and out), and a failure says itself
how it is retried (tg.classify, tg.RetryLater).
"""
from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import access
import messages
from db import Database
from kinds import Kind
from runtime import App
from tg import RetryLater, Stopping, budgeted_call, classify, send

log = logging.getLogger("clubbot.outbox")

# The sender gives a message up when it has failed for this long.
GIVE_UP_AFTER = 3 * 86400
MAX_BACKOFF = 600
MAX_RETRY_AFTER = 3600  # a longer 429 wait from Telegram is taken as this
LONGEST_WAIT = max(MAX_BACKOFF, MAX_RETRY_AFTER)  # a row due later than this was queued by a clock ahead
LANES_STOP_SECONDS = 1.0  # how long a stopping sender waits for its lanes to end


@dataclass(frozen=True)
class Context:
    """What a kind's function gets: the App, Bot API calls through the shared budget, the
    caches that the lanes share, and the outbox row at hand."""

    app: App
    admins: dict[int, tuple[float, frozenset[int]]] = field(default_factory=dict)  # access.chat_admins
    broadcast_edits: dict[int, tuple[float, int]] = field(default_factory=dict)  # messages.broadcast_progress
    row_id: int = 0  # the outbox row being done (access.expire closes it in its own transaction)

    @property
    def db(self) -> Database:
        return self.app.db

    @property
    def bot(self) -> Any:
        return self.app.bot

    def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One Bot API call through the shared rate budget (a chat's migration followed)."""
        return budgeted_call(self.app, method, *args, **kwargs)

    def send(self, chat_id: int, text: str, **kwargs: Any) -> Any:
        """sendMessage through the shared budget, at most one a second per chat."""
        return send(self.app, chat_id, text, **kwargs)


# What one kind of work does: (ctx, the recipient's chat id, the row's payload).
Handler = Callable[[Context, int, dict], None]

KINDS: dict[Kind, Handler] = {
    Kind.ACTIVATED: messages.activated,
    Kind.GRANTED: messages.granted,
    Kind.GIFT_BOUGHT: messages.gift_bought,
    Kind.GIFT_REDEEMED: messages.gift_redeemed,
    Kind.REFUNDED: messages.refunded,
    Kind.WAY_IN: messages.way_in,
    Kind.APPROVE: access.approve,
    Kind.JOIN_PLANS: messages.join_plans,
    Kind.DECLINE: access.decline,
    Kind.REMINDER: messages.reminder,
    Kind.EXPIRE: access.expire,
    Kind.LIFT_BAN: access.lift_ban,
    Kind.EXPIRED_NOTICE: messages.expired_notice,
    Kind.PAYMENT_MISMATCH: messages.payment_mismatch,
    Kind.TEXT: messages.text,
    Kind.BROADCAST: messages.broadcast,
    Kind.BROADCAST_STARTED: messages.broadcast_started,
    Kind.ADMIN_MISMATCH: messages.admin_mismatch,
    Kind.ADMIN_RIGHTS: messages.admin_rights,
    Kind.ADMIN_CHAT_ADDED: messages.admin_chat_added,
    Kind.ADMIN_TOKEN: messages.admin_token,
    Kind.ADMIN_WEBHOOK: messages.admin_webhook,
    Kind.ADMIN_WEBHOOK_UNUSABLE: messages.admin_webhook_unusable,
    Kind.ADMIN_INVOICE_UNREADABLE: messages.admin_invoice_unreadable,
    Kind.ADMIN_MIGRATED: messages.admin_migrated,
}
# Work that is retried until it is done, however long that takes.
NEVER_GIVE_UP = frozenset({Kind.EXPIRE, Kind.LIFT_BAN, Kind.GIFT_BOUGHT})
# What follows when a row of the kind is closed, sent or given up (same arguments as its work).
ON_CLOSE: dict[Kind, Handler] = {Kind.BROADCAST: messages.broadcast_counted}


class Sender:
    """Does the outbox's work through the Bot API, at least once per row, in order of priority."""

    def __init__(self, app: App, lanes: int = 1):
        self.app = app
        self.ctx = Context(app)
        self._lanes = Lanes(lanes, app.stop, self._deliver_all, on_exit=self._lane_ended) if lanes > 1 else None

    @property
    def db(self) -> Database:
        return self.app.db  # read when used, as Context.db is: the App's database may be replaced

    def _lane_ended(self) -> None:
        self.app.db.close()  # the lane's own connection

    def run(self) -> None:
        log.info("sender started")
        try:
            while not self.app.stop.is_set():
                self.app.heartbeat("sender")
                try:
                    done = self.run_once()
                except Exception:
                    log.exception("sender: unexpected failure")
                    done = 0
                if not done:
                    self.app.outbox_ready.wait(1.0)
                    self.app.outbox_ready.clear()
        finally:
            if self._lanes is not None:
                self._lanes.close(LANES_STOP_SECONDS)
        log.info("sender stopped")

    def run_once(self, limit: int = 200) -> int:
        """Deliver what is due now; return how many rows were tried.

        With several lanes, rows are split by recipient, so one chat's messages keep
        their order while Bot API round trips to different chats overlap.
        """
        rows = self.db.due_messages(self.app.now(), limit)
        if self._lanes is None or len(rows) < 2:
            self._deliver_all(rows)
            return len(rows)
        batches: dict[int, list[sqlite3.Row]] = {}
        for row in rows:
            batches.setdefault(row["chat_id"] % self._lanes.count, []).append(row)
        if len(batches) == 1:
            self._deliver_all(rows)
        else:
            self._lanes.run(list(batches.values()))
        return len(rows)

    def _deliver_all(self, rows: list[sqlite3.Row]) -> None:
        for row in rows:
            if self.app.stop.is_set():
                break
            try:
                self.deliver(row)
            except Stopping:
                break  # this row and the rest stay queued for the next start
            except Exception:  # one bad row must not stop the rest
                log.exception("outbox %s: delivery failed", row["id"])

    def deliver(self, row: sqlite3.Row) -> None:
        """Do one row's work, then close it or set its retry. Raises tg.Stopping if the process
        stops meanwhile (work not done stays queued as it was)."""
        handler = KINDS.get(row["kind"])
        if handler is None:
            self.db.message_done(row["id"], "failed", self.app.now(), f"unknown kind {row['kind']}")
            log.error("outbox %s: unknown kind %s", row["id"], row["kind"])
            return
        ctx = replace(self.ctx, row_id=row["id"])
        try:
            handler(ctx, row["chat_id"], json.loads(row["payload"]))
        except Exception as exc:
            self._failed(ctx, row, exc)
            return
        self.db.message_done(row["id"], "sent", self.app.now())
        log.info("sent %s to %s (outbox %s)", row["kind"], row["chat_id"], row["id"])
        self._closed(ctx, row)

    def _closed(self, ctx: Context, row: sqlite3.Row) -> None:
        after = ON_CLOSE.get(row["kind"])
        if after is not None:
            after(ctx, row["chat_id"], json.loads(row["payload"]))

    def _failed(self, ctx: Context, row: sqlite3.Row, exc: Exception) -> None:
        failure = classify(exc)
        now = self.app.now()
        where = f"outbox {row['id']} ({row['kind']} to {row['chat_id']})"
        if isinstance(exc, RetryLater):
            self._retry(row, now, str(exc), where)
            return
        if failure.kind == "flood":
            wait = min(failure.retry_after, MAX_RETRY_AFTER)
            self.app.limiter.pause(wait)
            self.db.message_retry(row["id"], now + wait, failure.description, count_attempt=False)
            log.warning("%s: Telegram asks to wait %ss", where, failure.retry_after)
            return
        if failure.kind == "blocked":
            log.warning("%s: given up, the member blocked the bot or left (%s)", where, failure.description)
        elif failure.kind == "rejected":
            log.error("%s: Telegram refused it: %s", where, failure.description)
        elif now - row["created_at"] > GIVE_UP_AFTER and row["kind"] not in NEVER_GIVE_UP:
            log.error("%s: given up after %d attempts: %s", where, row["attempts"] + 1, failure.description)
        else:
            self._retry(row, now, failure.description, where)
            return
        self.db.message_done(row["id"], "failed", now, failure.description)
        self._closed(ctx, row)

    def _retry(self, row: sqlite3.Row, now: int, description: str, where: str) -> None:
        delay = min(MAX_BACKOFF, 2 ** min(row["attempts"], 10))
        self.db.message_retry(row["id"], now + delay, description)
        log.warning("%s: failed (%s), retrying in %ss", where, description, delay)


class Lanes:
    """A few daemon threads, started once, that deliver batches of rows side by side; each
    keeps its own database connection.

    Not concurrent.futures: its threads are joined at interpreter exit, so one waiting on
    Telegram would hold a stopping process past its 10 s bound. A lane ends at close(),
    or once it is idle after the app's stop event is set. A lock lets one caller at a time
    start lanes, queue work or end them.
    """

    IDLE_WAIT = 0.5  # seconds between an idle lane's looks at the stop event

    def __init__(self, count: int, stop: threading.Event, work: Callable[[list[sqlite3.Row]], None],
                 on_exit: Callable[[], None]):
        self.count = count
        self._stop, self._work, self._on_exit = stop, work, on_exit
        self._tasks: queue.SimpleQueue[tuple[list[sqlite3.Row], threading.Event] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def run(self, batches: list[list[sqlite3.Row]]) -> None:
        """Deliver each batch on a lane; return when all are done, or when the lanes ended
        because the app stops (the rows not reached stay queued in the database)."""
        done = [threading.Event() for _ in batches]
        with self._lock:
            threads = self._start()
            for batch, finished in zip(batches, done, strict=True):
                self._tasks.put((batch, finished))
        for finished in done:
            while not finished.wait(self.IDLE_WAIT):
                if not any(thread.is_alive() for thread in threads):
                    with self._lock:
                        self._drop_tasks()
                    return

    def close(self, timeout: float) -> None:
        """End the lanes: each after the batch in its hands; waits at most `timeout` seconds.

        Nothing is left queued: a stop marker not taken (its lane had ended on its own) would
        end a lane of the next start at once, with that round's work."""
        with self._lock:
            running = [thread for thread in self._threads if thread.is_alive()]
            for _ in running:
                self._tasks.put(None)
            deadline = time.monotonic() + timeout
            for thread in running:
                thread.join(max(0.0, deadline - time.monotonic()))
            self._drop_tasks()
            self._threads = [thread for thread in running if thread.is_alive()]  # busy past the timeout

    def _start(self) -> list[threading.Thread]:
        """Start the lanes that are not running: all at the first batch, then none (unless the
        app's stop event was set and cleared again, as tests do). Called with the lock held."""
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        while len(self._threads) < self.count:
            thread = threading.Thread(target=self._lane, name="sender-lane", daemon=True)
            thread.start()
            self._threads.append(thread)
        return list(self._threads)

    def _drop_tasks(self) -> None:
        while True:
            try:
                self._tasks.get_nowait()
            except queue.Empty:
                return

    def _lane(self) -> None:
        try:
            while True:
                try:
                    task = self._tasks.get(timeout=self.IDLE_WAIT)
                except queue.Empty:
                    if self._stop.is_set():
                        return
                    continue
                if task is None:
                    return
                batch, finished = task
                try:
                    self._work(batch)
                finally:
                    finished.set()
        finally:
            self._on_exit()
