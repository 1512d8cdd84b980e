"""What the processes share at run time: the clock, logging, and the App bundle."""
from __future__ import annotations

import logging
import logging.handlers
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from config import Config
from cryptopay import CryptoPay
from db import Database

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Clock:
    """Unix time in whole seconds. Tests pass a clock they can move."""

    def now(self) -> int:
        return int(time.time())


class RedactingFormatter(logging.Formatter):
    """Formats a record, then blanks out every secret, tracebacks included.

    Library errors may carry a token (the Bot API puts it in every URL), so
    redaction happens here, at the last step, rather than at each call site.
    """

    def __init__(self, secrets: tuple[str, ...], fmt: str = LOG_FORMAT):
        super().__init__(fmt)
        parts: set[str] = set()
        for secret in secrets:
            if secret:
                parts.add(secret)
                tail = secret.partition(":")[2]
                if len(tail) >= 8:
                    parts.add(tail)
        self._secrets = sorted(parts, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def setup_logging(config: Config, stream: Any = None, to_file: bool = True) -> None:
    """Log to the rotating LOG_FILE (the services) and to stderr, secrets redacted, one line per event."""
    formatter = RedactingFormatter(config.secrets)
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if to_file:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(
            config.log_file, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(config.log_level)
    # Libraries speak at WARNING unless the owner asked for DEBUG.
    for name in ("TeleBot", "urllib3", "waitress.queue"):
        logging.getLogger(name).setLevel(logging.DEBUG if config.log_level == "DEBUG" else logging.WARNING)


@dataclass
class App:
    """Everything a handler, worker or request needs, built once per process."""

    config: Config
    db: Database
    clock: Clock
    cryptopay: CryptoPay
    bot: Any = None  # telebot.TeleBot, absent in the webhook-only process
    limiter: Any = None  # tg.RateLimiter
    stop: threading.Event = field(default_factory=threading.Event)
    outbox_ready: threading.Event = field(default_factory=threading.Event)
    bot_username: str | None = None
    bot_id: int | None = None
    chat_titles: dict[int, str] = field(default_factory=dict)
    chat_types: dict[int, str] = field(default_factory=dict)

    def now(self) -> int:
        return self.clock.now()

    def wake_sender(self) -> None:
        self.outbox_ready.set()


def build_app(config: Config, clock: Clock | None = None) -> App:
    """Open (and migrate) the database and make the Crypto Pay client."""
    database = Database(config.database_path)
    database.migrate()
    return App(
        config=config,
        db=database,
        clock=clock or Clock(),
        cryptopay=CryptoPay(config.crypto_pay_api_url, config.crypto_pay_token),
    )
