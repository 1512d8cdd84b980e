"""The Telegram side: the TeleBot, one shared rate budget and the calls through it, what an
error means, and what the bot knows of itself and of the club chats."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
import telebot
from telebot import apihelper

if TYPE_CHECKING:
    from runtime import App

log = logging.getLogger("clubbot.tg")

# Long polling waits this long for updates; the systemd stop timeout is above it.
LONG_POLL_SECONDS = 25
CONNECT_TIMEOUT = 5
READ_TIMEOUT = 15


def make_bot(token: str, api_url: str) -> telebot.TeleBot:
    """A synchronous TeleBot that talks to `api_url` with explicit timeouts."""
    apihelper.API_URL = api_url.rstrip("/") + "/bot{0}/{1}"
    apihelper.FILE_URL = api_url.rstrip("/") + "/file/bot{0}/{1}"
    apihelper.CONNECT_TIMEOUT = CONNECT_TIMEOUT
    apihelper.READ_TIMEOUT = READ_TIMEOUT
    return telebot.TeleBot(token, threaded=False, parse_mode=None)


class RateLimiter:
    """A token bucket shared by every call that sends or removes, plus 1 message/s per chat.

    `pause()` stops everyone after a 429, since Telegram's flood limit is per bot.
    It runs on real monotonic time (Telegram's clock, not the product's);
    tests may pass their own `monotonic` and `sleep`.
    """

    PER_CHAT_INTERVAL = 1.0

    def __init__(self, rate: float, burst: float | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float, threading.Event | None], bool] | None = None):
        self.rate = rate
        # A small burst: a full second's worth at once, on top of the steady rate, would
        # overrun Telegram's own per-second window (30 calls; the default rate is 25).
        self.capacity = max(1.0, burst if burst is not None else rate * 0.2)
        self._monotonic = monotonic
        self._sleep = sleep or _sleep
        self._tokens = self.capacity
        self._stamp = monotonic()
        self._paused_until = 0.0
        self._chat_next: dict[int, float] = {}
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, self._monotonic() + seconds)

    def acquire(self, stop: threading.Event | None = None, chat_id: int | None = None) -> bool:
        """Wait for a token (and for the chat's turn); False if `stop` was set first."""
        while True:
            with self._lock:
                now = self._monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                chat_ready = self._chat_next.get(chat_id, 0.0) if chat_id is not None else 0.0
                if now >= self._paused_until and now >= chat_ready and self._tokens >= 1:
                    self._tokens -= 1
                    if chat_id is not None:
                        self._chat_next[chat_id] = now + self.PER_CHAT_INTERVAL
                        if len(self._chat_next) > 10_000:
                            self._forget_chats(now)
                    return True
                wait = max(self._paused_until - now, chat_ready - now, (1 - self._tokens) / self.rate)
            if self._sleep(min(max(wait, 0.001), 0.5), stop):
                return False

    def chat_wait(self, chat_id: int) -> float:
        """Seconds until this chat's next message may go (0: now)."""
        with self._lock:
            return max(0.0, self._chat_next.get(chat_id, 0.0) - self._monotonic())

    def _forget_chats(self, now: float) -> None:
        self._chat_next = {chat: ready for chat, ready in self._chat_next.items() if ready > now}


def _sleep(seconds: float, stop: threading.Event | None) -> bool:
    """Sleep; True if `stop` was set."""
    if stop is not None:
        return stop.wait(seconds)
    time.sleep(seconds)
    return False


@dataclass(frozen=True)
class Failure:
    """What a failed Bot API call means for a retry."""

    kind: str  # "flood" (wait retry_after), "blocked" (403), "rejected" (other 4xx), "transient"
    description: str
    retry_after: int = 0
    # Of a refusal: "no_rights" (the bot may not do it there: rights, or the chat is gone;
    # a 403 "blocked" says the bot is not let in at all),
    # "admin" (the member is the chat's admin or owner), or "" (anything else).
    reason: str = ""


def migrated_to(exc: BaseException) -> int | None:
    """The new id of a group that became a supergroup, when a call to its old id says so."""
    if isinstance(exc, apihelper.ApiTelegramException) and isinstance(exc.result_json, dict):
        new_id = (exc.result_json.get("parameters") or {}).get("migrate_to_chat_id")
        if isinstance(new_id, int) and not isinstance(new_id, bool):
            return new_id
    return None


def _refusal_reason(text: str) -> str:
    """The Bot API says why it refused only in words; they are read here, and nowhere else."""
    if "rights" in text or "chat not found" in text:
        return "no_rights"
    if "administrator" in text or "owner" in text:
        return "admin"
    return ""


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, apihelper.ApiTelegramException):
        code = exc.error_code
        description = f"{code} {exc.description}"
        if code == 429:
            parameters = exc.result_json.get("parameters") or {}
            retry_after = parameters.get("retry_after")
            return Failure("flood", description, int(retry_after) if isinstance(retry_after, int) else 5)
        if code == 403:
            return Failure("blocked", description, reason=_refusal_reason(description.lower()))
        if code == 400:
            return Failure("rejected", description, reason=_refusal_reason(description.lower()))
        return Failure("transient", description)  # 5xx, and 401/404 while a token or proxy is being fixed
    if isinstance(exc, apihelper.ApiHTTPException):
        return Failure("transient", f"HTTP {exc.result.status_code}")
    if isinstance(exc, apihelper.ApiException):
        return Failure("transient", "invalid answer from the Bot API")
    if isinstance(exc, requests.RequestException):
        return Failure("transient", type(exc).__name__)
    return Failure("transient", f"{type(exc).__name__}: {exc}")


class Stopping(BaseException):
    """The process is stopping: a budgeted call gives up its wait, and the work stays queued.

    A BaseException, as asyncio.CancelledError is: it is no failure, so no `except Exception`
    takes it for one, and none needs an `except Stopping: raise` before it. It is caught once
    per thread that makes budgeted calls, at the top of its loop (outbox.Sender,
    workers.Sweeper, the update handler threads, clubbot's start-up), which ends its turn there.
    """


class RetryLater(Exception):
    """Telegram cannot do this now for a reason that time alone does not fix (the bot's rights
    in a chat, a chat gone): the work is retried with backoff until it is done, never given up."""


def budgeted_call(app: App, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """A Bot API call through the shared rate budget. A club group upgraded to a supergroup
    answers calls to its old id (the first argument) with the new one: recorded, asked again."""
    for attempt in range(2):
        if not app.limiter.acquire(app.stop):
            raise Stopping()
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            new_id = migrated_to(exc)
            if attempt or new_id is None or not args or args[0] == new_id:
                raise
            app.follow_migration(args[0], new_id)
            args = (new_id, *args[1:])
    raise AssertionError("unreachable")


def send(app: App, chat_id: int, text: str, **kwargs: Any) -> Any:
    """sendMessage through the shared budget, at most one a second per chat."""
    if not app.limiter.acquire(app.stop, chat_id=chat_id):
        raise Stopping()
    return app.bot.send_message(chat_id, text, **kwargs)


# --- what the bot knows of itself and of the club chats, asked once and kept on the App ---

def learn_bot(app: App) -> int:
    """The bot's own id (getMe, once; its username is kept too, for the invoice's return
    button). Raises as the call does."""
    if app.bot_id is None:
        me = budgeted_call(app, app.bot.get_me)
        app.bot_username, app.bot_id = me.username, me.id
    return app.bot_id


def learn_chat(app: App, chat_id: int) -> Any:
    """getChat: the chat's title and type kept on the App (under the id asked). Raises as the call does."""
    chat = budgeted_call(app, app.bot.get_chat, chat_id)
    app.chat_titles[chat_id], app.chat_types[chat_id] = chat.title or "", chat.type
    return chat


def chat_title(app: App, chat_id: int) -> str:
    """The chat's title, asked once; "" when Telegram does not say (a log line)."""
    title = app.chat_titles.get(chat_id)
    if title is not None:
        return title
    try:
        return learn_chat(app, chat_id).title or ""
    except Exception as exc:
        log.warning("getChat %s failed: %s", chat_id, classify(exc).description)
        return ""
