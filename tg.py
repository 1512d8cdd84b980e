"""The Telegram side: the TeleBot, one shared rate budget, and what an error means."""
from __future__ import annotations

import threading
import time
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
    """A token bucket shared by every call that sends or removes.

    `pause()` stops everyone after a 429, since Telegram's flood limit is per bot.
    Real (monotonic) time: this is about Telegram's clock, not the product's.
    """

    def __init__(self, rate: float, burst: float | None = None):
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate)
        self._tokens = self.capacity
        self._stamp = time.monotonic()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for a token; False if `stop` was set first."""
        while True:
            with self._lock:
                now = time.monotonic()
                self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if now >= self._paused_until and self._tokens >= 1:
                    self._tokens -= 1
                    return True
                wait = max(self._paused_until - now, (1 - self._tokens) / self.rate)
            wait = min(wait, 0.5)
            if stop is not None:
                if stop.wait(wait):
                    return False
            else:
                time.sleep(wait)


@dataclass(frozen=True)
class Failure:
    """What a failed Bot API call means for a retry."""

    kind: str  # "flood" (wait retry_after), "blocked" (403), "rejected" (other 4xx), "transient"
    description: str
    retry_after: int = 0


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, apihelper.ApiTelegramException):
        code = exc.error_code
        description = f"{code} {exc.description}"
        if code == 429:
            parameters = exc.result_json.get("parameters") or {}
            retry_after = parameters.get("retry_after")
            return Failure("flood", description, int(retry_after) if isinstance(retry_after, int) else 5)
        if code == 403:
            return Failure("blocked", description)
        if code == 400:
            return Failure("rejected", description)
        return Failure("transient", description)  # 5xx, and 401/404 while a token or proxy is being fixed
    if isinstance(exc, apihelper.ApiHTTPException):
        return Failure("transient", f"HTTP {exc.result.status_code}")
    if isinstance(exc, apihelper.ApiException):
        return Failure("transient", "invalid answer from the Bot API")
    if isinstance(exc, requests.RequestException):
        return Failure("transient", type(exc).__name__)
    return Failure("transient", f"{type(exc).__name__}: {exc}")
