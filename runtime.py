"""What the processes share at run time: the clock, logging, and the App bundle."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from config import Config
from cryptopay import CryptoPay
from db import Database
from files import make_private_folders, open_private
from health import Heartbeats

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
        self._plain = fmt == LOG_FORMAT  # then format() builds the line itself, cheaply
        self._stamp: tuple[int, str] = (-1, "")  # the last second formatted, and its text
        parts: set[str] = set()
        for secret in secrets:
            if secret:
                parts.add(secret)
                tail = secret.partition(":")[2]
                if len(tail) >= 8:
                    parts.add(tail)
        self._secrets = sorted(parts, key=len, reverse=True)

    def format(self, record: logging.LogRecord) -> str:
        text = self._format_plain(record) if self._plain else super().format(record)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


    def _format_plain(self, record: logging.LogRecord) -> str:
        """LOG_FORMAT, as logging.Formatter would write it, with the date and time formatted
        once a second rather than once a line (the webhook writes a line per request)."""
        record.message = record.getMessage()
        second = int(record.created)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, time.strftime(self.default_time_format, self.converter(second)))
        text = f"{stamp[1]},{int(record.msecs):03d} {record.levelname} {record.name}: {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            text = f"{text}\n{record.exc_text}"
        if record.stack_info:
            text = f"{text}\n{self.formatStack(record.stack_info)}"
        return text


class LogHandler(logging.Handler):
    """Formats each record once and writes it to the log file (rotating by size) and to stderr.

    The standard RotatingFileHandler formats every record twice and stats the
    file on each one; on the webhook's hot path that cost more than the payment.
    """

    def __init__(self, path: Path | None, stream: Any, max_bytes: int = 10 * 1024 * 1024, backups: int = 5):
        super().__init__()
        self.path, self.stream, self.max_bytes, self.backups = path, stream, max_bytes, backups
        self.file = None
        self.size = 0
        if path is not None:
            self.file = _open_log(path)
            self.size = self.file.tell()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if self.file is not None:
                if self.size + len(line) > self.max_bytes:
                    self._rotate()
                self.file.write(line)
                self.file.flush()
                self.size += len(line.encode("utf-8")) if not line.isascii() else len(line)
            self.stream.write(line)
            self.stream.flush()
        except Exception:
            self.handleError(record)

    def _rotate(self) -> None:
        self.file.close()
        for number in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{number}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{number + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self.file = _open_log(self.path)
        self.size = 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        super().close()


def _open_log(path: Path) -> TextIO:
    """The log for appending; a new one is 0600 (it names members), and renaming keeps that."""
    return open(open_private(path, os.O_WRONLY | os.O_APPEND), "a", encoding="utf-8")


def setup_logging(config: Config, stream: Any = None, to_file: bool = True) -> None:
    """Log to the rotating LOG_FILE (the services) and to stderr, secrets redacted, one line per event."""
    if to_file:
        make_private_folders(config.log_file.parent)
    handler = LogHandler(config.log_file if to_file else None, stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(config.secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.log_level)
    # The format uses none of these; skipping them makes each record cheaper (the logging
    # HOWTO's "Optimization"), which counts on the webhook's hot path.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    # Libraries speak at WARNING unless the owner asked for DEBUG; waitress's queue-depth
    # warnings are noise under any load, since requests wait for a free thread by design.
    for name in ("TeleBot", "urllib3"):
        logging.getLogger(name).setLevel(logging.DEBUG if config.log_level == "DEBUG" else logging.WARNING)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)


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
    # Club groups upgraded to supergroups: old id -> new id (db.chat_migrations), followed at once.
    chat_migrations: dict[int, int] = field(default_factory=dict)
    heartbeats: Heartbeats = field(default_factory=Heartbeats)

    def now(self) -> int:
        return self.clock.now()

    def club_chats(self) -> tuple[int, ...]:
        """CLUB_CHAT_IDS as the chats are now: a group upgraded to a supergroup by its new id."""
        chats: list[int] = []
        for chat_id in self.config.club_chat_ids:
            seen = {chat_id}
            while chat_id in self.chat_migrations and self.chat_migrations[chat_id] not in seen:
                chat_id = self.chat_migrations[chat_id]
                seen.add(chat_id)
            if chat_id not in chats:
                chats.append(chat_id)
        return tuple(chats)

    def heartbeat(self, name: str) -> None:
        """A sign of life from the worker `name`, once per turn of its loop (see health.py)."""
        self.heartbeats.beat(name)

    def wake_sender(self) -> None:
        self.outbox_ready.set()

    def follow_migration(self, old: int, new: int) -> None:
        """A club group became a supergroup with a new id: work on it from now on (remembered in
        the database); the admins are told to update CLUB_CHAT_IDS."""
        self.chat_migrations[old] = new
        if self.db.record_migration(old, new, self.now(), self.config.admin_ids):
            logging.getLogger("clubbot").warning(
                "club chat %s was upgraded to a supergroup: it is now %s (write that in CLUB_CHAT_IDS)", old, new)
            self.wake_sender()


class WrongNetwork(Exception):
    """The database holds the other Crypto Pay network's payments."""


def wrong_network(config: Config, held: str) -> str:
    """Why a database holding `held` payments is not used with the configured network."""
    return (f"the database {config.database_path} holds {held} payments and CRYPTO_PAY_NETWORK is "
            f"{config.crypto_pay_network}: give each network a database of its own (DATABASE_PATH, e.g. "
            f"data/clubbot-{config.crypto_pay_network}.db), so that test payments never count as revenue")


def build_app(config: Config, clock: Clock | None = None) -> App:
    """Open (and migrate) the database and make the Crypto Pay client. Raises WrongNetwork
    when the database's payments are on the other network: testnet and mainnet never share
    a database, so test payments never count as revenue."""
    database = Database(config.database_path)
    database.migrate()
    network = database.claim_network(config.crypto_pay_network)
    if network != config.crypto_pay_network:
        database.close()
        raise WrongNetwork(wrong_network(config, network))
    return App(
        config=config,
        db=database,
        clock=clock or Clock(),
        cryptopay=CryptoPay(config.crypto_pay_api_url, config.crypto_pay_token),
        chat_migrations=database.chat_migrations(),
    )
