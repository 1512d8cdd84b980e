"""The Telegram side: the TeleBot, one shared rate budget, and what an error means."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
import telebot
from telebot import apihelper

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
