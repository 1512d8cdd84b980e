"""Telegram updates: fetched by long polling, kept in the database before they are
confirmed to Telegram (the inbox), and handled once each, in fair turns between members.

- Kept first: an update fetched is stored, then confirmed by the next getUpdates. One
  fetched again after a kill is recognised by its update_id; one stored but not yet
  handled is handled after a restart. Commands whose effect must happen once (/grant,
  /broadcast) also record their message in the transaction of the effect (db.commands).
- Fair: a few handler threads take one update at a time from a queue per member, in
  turns; a member whose chat has had its message this second (Telegram allows about
  one a second per chat) waits without holding anyone else up, and a member's queue is
  short: a flood beyond it is dropped.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

import requests
from telebot import apihelper, types

from runtime import App
from tg import LONG_POLL_SECONDS, Stopping, classify

log = logging.getLogger("clubbot.updates")

ALLOWED_UPDATES = ["message", "callback_query", "chat_join_request", "my_chat_member", "pre_checkout_query"]
HANDLER_THREADS = 4
# Updates of one member waiting to be handled; more are dropped (a flood, not a conversation).
MAX_QUEUED_PER_MEMBER = 5
DROP_LOG_EVERY = 60.0  # seconds between "dropped" log lines for one member
HANDLER_SILENCE = 300  # seconds a handler thread may go without a sign of life (health.py)


def member_of(update: dict) -> int | None:
    """Whose update this is: the user who sent it (None for updates of no one in particular)."""
    for kind in ALLOWED_UPDATES:
        item = update.get(kind)
        if isinstance(item, dict):
            sender = item.get("from")
            return sender.get("id") if isinstance(sender, dict) else None
    return None


def droppable(update: dict, admin_ids: frozenset[int]) -> bool:
    """What a flood may lose: a member's messages and button presses. Never a payment or its
    pre-checkout query, a join request
    (it would wait unanswered for good), a change of the bot's rights, a group's service
    message, or anything an admin sends."""
    if member_of(update) in admin_ids:
        return False
    message = update.get("message")
    if isinstance(message, dict):  # a payment is never dropped
        return (message.get("chat") or {}).get("type") == "private" and "successful_payment" not in message
    return "callback_query" in update


def worth_keeping(update: dict) -> bool:
    """Everything but a club group's chatter (an admin bot sees every message there): the
    handlers answer private chats, and in groups only the service message of an upgrade."""
    message = update.get("message")
    if not isinstance(message, dict):
        return True
    chat = message.get("chat") or {}
    return chat.get("type") == "private" or "migrate_to_chat_id" in message


class FairQueue:
    """Work kept per key (a member), taken one at a time per key and in turns between keys.

    A key is not handed out while one of its items is in hand (its updates keep their
    order), nor while `wait_for(key)` says its chat must wait; other keys go meanwhile.
    """

    def __init__(self, per_key: int, wait_for: Callable[[Hashable], float]):
        self.per_key = per_key
        self._wait_for = wait_for
        self._cond = threading.Condition()
        self._work: dict[Hashable, deque] = {}
        self._turns: deque[Hashable] = deque()  # keys with work and none in hand
        self._busy: set[Hashable] = set()

    def put(self, key: Hashable, item: object, droppable: bool = True) -> bool:
        """Queue an item; False (and nothing queued) when it is droppable and the key already
        has `per_key` waiting."""
        with self._cond:
            queue = self._work.setdefault(key, deque())
            if droppable and len(queue) >= self.per_key:
                return False
            queue.append(item)
            if len(queue) == 1 and key not in self._busy:
                self._turns.append(key)
            self._cond.notify()
            return True

    def take(self, stop: threading.Event, timeout: float = 1.0) -> tuple[Hashable, object] | None:
        """The next item whose key's turn it is; None if none came within `timeout` or on stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not stop.is_set():
                soonest = deadline - time.monotonic()
                if soonest <= 0:
                    return None
                for _ in range(len(self._turns)):
                    key = self._turns[0]
                    wait = self._wait_for(key)
                    if wait <= 0:
                        self._turns.popleft()
                        self._busy.add(key)
                        return key, self._work[key].popleft()
                    self._turns.rotate(-1)
                    soonest = min(soonest, wait)
                self._cond.wait(max(soonest, 0.001))
            return None

    def done(self, key: Hashable) -> None:
        """The key's item in hand is finished: its next one (if any) takes its turn at the back."""
        with self._cond:
            self._busy.discard(key)
            if self._work.get(key):
                self._turns.append(key)
                self._cond.notify()
            else:
                self._work.pop(key, None)

    def waiting(self) -> int:
        with self._cond:
            return sum(len(queue) for queue in self._work.values())


class UpdatePoller:
    """Long-polls Telegram, keeps each update in the inbox, and hands them to the handlers."""

    def __init__(self, app: App, threads: int = HANDLER_THREADS):
        self.app = app
        self.bot = app.bot
        self.offset: int | None = None
        self.queue = FairQueue(MAX_QUEUED_PER_MEMBER, self._wait_for)
        self.threads = threads
        self._handlers: list[threading.Thread] = []
        self._dropped_logged: dict[int | None, float] = {}

    def _wait_for(self, member: Hashable) -> float:
        if member is None or self.app.limiter is None:
            return 0.0
        return self.app.limiter.chat_wait(member)

    # --- fetching ---

    def run(self) -> None:
        log.info("Telegram polling started")
        self.start_handlers()
        dropped = [row["update_id"] for row in self.app.db.pending_updates()  # stored before a stop
                   if not self._queue(row["update_id"], row["member_id"], row["body"], json.loads(row["body"]))]
        self._mark_dropped(dropped)
        backoff = 1.0
        while not self.app.stop.is_set():
            self.app.heartbeat("updates")
            try:
                self.fetch_once()
            except Exception as exc:
                if self.app.stop.is_set():
                    break
                log.warning("getUpdates failed: %s; retrying in %.0fs", classify(exc).description, backoff)
                self.app.stop.wait(backoff)
                backoff = min(backoff * 2, 60)
                continue
            backoff = 1.0
        log.info("Telegram polling stopped")

    def fetch_once(self, long_poll: int = LONG_POLL_SECONDS) -> int:
        """One getUpdates: keep what came, queue what is new; return how many came."""
        raw = apihelper.get_updates(self.bot.token, self.offset, None, long_poll + 10, ALLOWED_UPDATES, long_poll)
        if not raw:
            return 0
        kept = [(u["update_id"], member_of(u), json.dumps(u)) for u in raw if worth_keeping(u)]
        fresh = set(self.app.db.store_updates(kept, self.app.now())) if kept else set()
        # Confirmed by the next getUpdates: only now that they are kept.
        self.offset = raw[-1]["update_id"] + 1
        by_id = {u["update_id"]: u for u in raw}
        dropped = []
        for update_id, member_id, body in kept:
            if update_id not in fresh:
                continue
            if "pre_checkout_query" in by_id[update_id]:
                threading.Thread(target=self._answer_now, args=(update_id, body), name="pre-checkout",
                                 daemon=True).start()
            elif not self._queue(update_id, member_id, body, by_id[update_id]):
                dropped.append(update_id)
        self._mark_dropped(dropped)  # after all are queued: a failure here holds up none of them
        return len(raw)

    def _answer_now(self, update_id: int, body: str) -> None:
        """A pre-checkout query, handled at once on a thread of its own: Telegram takes no payment
        it has not had an answer for within 10 seconds, the handler threads may all be waiting on
        Crypto Pay, and a slow answer must not hold up polling."""
        try:
            self.handle(update_id, body)
        except Stopping:
            log.info("update %s: left for the next start (stopping)", update_id)

    def _queue(self, update_id: int, member_id: int | None, body: str, update: dict) -> bool:
        """Hand an update to the handlers; False if it is dropped (a flood from one member)."""
        if self.queue.put(member_id, (update_id, body), droppable(update, self.app.config.admin_ids)):
            return True
        last = self._dropped_logged.get(member_id, 0.0)
        if time.monotonic() - last >= DROP_LOG_EVERY:
            self._dropped_logged[member_id] = time.monotonic()
            log.warning("member %s sends faster than they are answered: update %s dropped (and more within %ds "
                        "without a log line)", member_id, update_id, DROP_LOG_EVERY)
        return False

    def _mark_dropped(self, update_ids: list[int]) -> None:
        now = self.app.now()
        try:
            for update_id in update_ids:
                self.app.db.update_done(update_id, now, status="dropped")
        except sqlite3.Error as exc:  # left pending: handled after a restart instead
            log.warning("dropped updates not recorded: %s", exc)

    # --- handling ---

    def start_handlers(self) -> None:
        for number in range(len(self._handlers), self.threads):
            thread = threading.Thread(target=self._handle_loop, name=f"handler-{number + 1}", daemon=True)
            thread.start()
            self._handlers.append(thread)
            # A handler may wait on Crypto Pay and Telegram (20 s a call), never for minutes.
            self.app.heartbeats.register(thread.name, HANDLER_SILENCE, thread)

    def _handle_loop(self) -> None:
        name = threading.current_thread().name
        while not self.app.stop.is_set():
            self.app.heartbeat(name)
            taken = self.queue.take(self.app.stop)
            if taken is None:
                continue
            member, (update_id, body) = taken
            try:
                self.handle(update_id, body)
            except Stopping:  # a Bot API call gave up its wait: the update stays pending for the next start
                log.info("update %s: left for the next start (stopping)", update_id)
            except Exception:  # the loop must outlive any one update
                log.exception("update %s: handling failed", update_id)
            finally:
                self.queue.done(member)

    def handle(self, update_id: int, body: str) -> None:
        """Run the handlers on one update, then mark it handled (a failing one too: it must not loop).
        Raises tg.Stopping if the process stops meanwhile: the update is not marked, and is handled
        again after a restart."""
        try:
            self.bot.process_new_updates([types.Update.de_json(body)])
        except Exception:
            log.exception("update %s: handler failed", update_id)
        try:
            self.app.db.update_done(update_id, self.app.now())
        except sqlite3.Error as exc:  # still pending: handled again after a restart
            log.warning("update %s: not marked handled: %s", update_id, exc)

    # --- stopping ---

    def shutdown(self, timeout: float) -> None:
        """Let the handlers finish the updates in hand, then confirm what was fetched.

        The confirming getUpdates must not long-poll (TeleBot turns a long-poll timeout of 0
        into its default of 10 s), so it goes out directly, with Telegram's timeout=0.
        """
        deadline = time.monotonic() + timeout
        for thread in self._handlers:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.offset is None:
            return
        config = self.app.config
        try:
            response = requests.get(f"{config.telegram_api_url}/bot{config.bot_token}/getUpdates",
                                    params={"offset": self.offset, "limit": 1, "timeout": 0}, timeout=(2, 2))
            response.raise_for_status()
        except requests.RequestException as exc:
            log.warning("could not confirm fetched updates: %s", classify(exc).description)
