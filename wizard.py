"""The setup wizard (`python clubbot.py setup`): from nothing to a working `.env`.

It asks the owner on the terminal, or takes each answer from a flag so that it runs
unattended (`--yes` never asks); it checks every answer against Telegram and Crypto
Pay as it comes, then writes `.env` in one step (0600, renamed into place: Ctrl-C or a
crash never leaves half a file) and runs `check` on it. Every wait for Telegram is
bounded and says what it waits for; a token is never shown whole.
"""
from __future__ import annotations

import argparse
import getpass
import grp
import json
import math
import os
import pwd
import re
import secrets
import sqlite3
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from telebot import apihelper, types

import config as config_module
import files
import texts
from access import missing_rights
from config import NETWORK_URLS, SETTINGS, TESTNET_DATABASE, Config, ConfigError, Plan, format_duration, parse_duration
from cryptopay import CryptoPay, CryptoPayError
from tg import CONNECT_TIMEOUT, READ_TIMEOUT, classify, make_bot, migrated_to
from updates import ALLOWED_UPDATES

T = TypeVar("T")

DEFAULT_PLANS = "month:30d:5:USDT,year:365d:50:USDT"
MAX_WAIT = 3600  # --wait: one hour at most
LONG_POLL_SECONDS = 25
RETRY_SECONDS = 2  # between two getUpdates that failed
# Updates dated this long before setup started are old news (an old /start is not the owner's);
# the margin allows for a server clock a little behind Telegram's.
STALE_SECONDS = 60
MAX_KEPT_UPDATES = 500
WATCHED_UPDATES = ["message", "my_chat_member"]
# The one-time code of the link that makes its opener the first admin: 16 characters of
# [A-Za-z0-9_-], as Telegram takes them after ?start= (64 at most).
START_CODE_BYTES = 12
STEPS = 6
# The settings setup writes, in the order a new .env lists them; other lines of a .env are kept.
WRITTEN = ("BOT_TOKEN", "CRYPTO_PAY_TOKEN", "CRYPTO_PAY_NETWORK", "CLUB_CHAT_IDS", "PLANS", "ADMIN_IDS",
           "WEBHOOK_URL", "DATABASE_PATH")
HEADER = (
    "# ClubBot settings, written by `python clubbot.py setup` (run it again to change them).",
    "# The environment wins over this file; it also works as a systemd EnvironmentFile=.",
    "# Every setting is in README.md (Configuration).",
)
# ClubBot's .env reader and systemd's EnvironmentFile= read these differently (an inline
# comment, quotes, escapes), so no value setup writes may hold them; nor the other line breaks
# some tools split lines at (C1 controls as U+0085, U+2028, U+2029), nor any control character.
UNSAFE = re.compile(r"[#'\"\\\x00-\x1f\x7f-\x9f\u2028\u2029]")
ENV_KEY = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
DOMAIN = re.compile(r"(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,62}")
# The same rights as access.missing_rights, by the names Telegram's apps give them.
RIGHT_FIXES = {
    "right_admin": "make {bot} an administrator of the chat",
    "right_invite": 'give {bot} the right "Invite Users via Link"',
    "right_ban": 'give {bot} the right "Ban Users"',
}


class SetupError(Exception):
    """Setup cannot go on; str() is the one line to show (exit code 1)."""


class Refused(Exception):
    """An answer that was checked and refused, with the reason: asked again, or a SetupError."""


def say(line: str = "") -> None:
    print(line, flush=True)


def mask(secret: str | None) -> str:
    """'1234...abcd': enough to tell two tokens apart, never the token."""
    if not secret:
        return ""
    keep = min(4, len(secret) // 4)
    return f"{secret[:keep]}...{secret[len(secret) - keep:]}"


def span(seconds: float) -> str:
    """'5 minutes', '1 second': a wait as the owner reads it."""
    seconds = int(seconds)
    for unit, size in (("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size and seconds % size == 0 or size == 1:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    raise AssertionError("unreachable")


# --- the entry point ---

def run(args: argparse.Namespace, check: Callable[[Config], int]) -> int:
    """`clubbot.py setup`: 0 when `.env` is written and `check(config)` passes on it, 1 when setup
    cannot go on (one line) or check finds a problem, 130 on Ctrl-C."""
    path = Path(args.env_file)
    written: list[os.stat_result] = []  # the new file, once setup writes it
    try:
        return _setup(args, check, path, written)
    except SetupError as exc:
        print(f"setup: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print(f"\nsetup stopped; {path} was written, run `python clubbot.py check`" if is_written(path, written)
              else "\nsetup stopped; nothing was written", file=sys.stderr, flush=True)
        return 130


def is_written(path: Path, written: list[os.stat_result]) -> bool:
    """Whether `path` is the file setup wrote: renamed into place, however soon Ctrl-C came after."""
    try:
        return bool(written) and os.path.samestat(os.stat(path), written[0])
    except OSError:
        return False


def _setup(args: argparse.Namespace, check: Callable[[Config], int], path: Path,
           written: list[os.stat_result]) -> int:
    terminal = Terminal(unattended=args.yes)
    seconds = wait_seconds(args.wait)
    kept, lines, database = _prepare(path, terminal)
    values: dict[str, str] = {}
    step(1, "The bot")
    telegram = _step_bot(terminal, args, kept)
    values["BOT_TOKEN"] = telegram.token
    step(2, "You, the first admin")
    values["ADMIN_IDS"] = _step_admins(terminal, args, kept, telegram, seconds)
    step(3, "The club chats")
    admins = {int(admin) for admin in values["ADMIN_IDS"].split(",")}
    values["CLUB_CHAT_IDS"] = _step_chats(terminal, args, kept, telegram, seconds, admins)
    telegram.done_reading()
    step(4, "Crypto Pay")
    values.update(_step_crypto(terminal, args, kept))
    values.update(_network_database(path, values["CRYPTO_PAY_NETWORK"], kept))
    step(5, "Plans and the domain")
    values["PLANS"] = _step_plans(terminal, args, kept)
    values["WEBHOOK_URL"] = _step_domain(terminal, args, kept)
    step(6, f"Writing {path} and checking it")
    write_env(path, database, render(lines, values), written)
    info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    if mode != files.PRIVATE_FILE:
        say(f"{path} written (mode {mode:o}: its group may read it, as before).")
    else:
        say(f"{path} written (readable by " + ("you only)." if info.st_uid == os.geteuid()
                                               else f"{user_name(info.st_uid)} only, as before)."))
    return _finish(path, values, check)


def _network_database(path: Path, network: str, kept: dict[str, str]) -> dict[str, str]:
    """DATABASE_PATH for the network, to be written ({} when .env's stays): testnet's payments in a
    database of their own, so that they never count as revenue, yet an owner's database is never
    left behind for an empty one; an owner's own path kept. SetupError when the database .env would
    name holds the other network's payments (ClubBot would refuse to start with it)."""
    default = SETTINGS["DATABASE_PATH"][1]
    current = kept.get("DATABASE_PATH")
    in_use = current or default  # the database ClubBot ran with until now...
    before = kept.get("CRYPTO_PAY_NETWORK") or SETTINGS["CRYPTO_PAY_NETWORK"][1]  # ...on this network

    def holds(database: str) -> str | None:
        return held_network(path, database, before if database == in_use else None)

    change: dict[str, str] = {}
    if network == "testnet" and current is None:
        # The default database, once it exists, is kept: the owner's on testnet already (setup
        # wrote no DATABASE_PATH before), or one no payment was made with; mainnet's is left alone.
        if not database_file(path, default).exists() or holds(default) == "mainnet":
            change = {"DATABASE_PATH": TESTNET_DATABASE}
    elif network == "mainnet" and current == TESTNET_DATABASE:
        change = {"DATABASE_PATH": default}
    chosen = change.get("DATABASE_PATH", in_use)
    held = holds(chosen)
    if held not in (None, network):
        what = "payments of an unrecorded network" if held == "unknown" else f"{held} payments"
        raise SetupError(f"the database {chosen} holds {what}, and ClubBot does not use it for {network}: "
                         f"set DATABASE_PATH=data/clubbot-{network}.db (a database of its own) in {path}, "
                         f"then run setup again")
    return change


def database_file(path: Path, database: str) -> Path:
    """Where DATABASE_PATH `database` is for ClubBot run beside .env at `path` (it reads the .env
    of the folder it runs in, and a relative DATABASE_PATH from there)."""
    return Path(os.path.abspath(path)).parent / database


def held_network(path: Path, database: str, ran_with: str | None = None) -> str | None:
    """The network whose payments DATABASE_PATH `database` holds: the one ClubBot recorded at its
    first start (db.claim_network); for payments made before networks were recorded, `ran_with`
    (the network ClubBot used it with), else "unknown"; None when there is no such file or it holds
    no payment (either network may take it)."""
    file = database_file(path, database)
    if not file.is_file():
        return None
    try:
        connection = sqlite3.connect(f"{file.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            recorded = (connection.execute("SELECT value FROM state WHERE key = 'network'").fetchone()
                        if "state" in tables else None)
            paid = ("invoices" in tables
                    and connection.execute("SELECT EXISTS (SELECT 1 FROM invoices)").fetchone()[0])
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise SetupError(f"cannot read the database {database} ({file}): {exc}") from None
    if recorded:
        return recorded[0]
    return (ran_with or "unknown") if paid else None


def step(number: int, title: str) -> None:
    say(f"\n[{number}/{STEPS}] {title}")


def wait_seconds(text: str) -> int:
    try:
        seconds = parse_duration(text, MAX_WAIT)
    except ValueError as exc:
        raise SetupError(f"--wait: {exc}") from None
    if seconds <= 0:
        raise SetupError("--wait: must be more than 0")
    return seconds


def _finish(path: Path, values: dict[str, str], check: Callable[[Config], int]) -> int:
    try:
        written = config_module.load(env_file=path)
    except ConfigError as exc:
        say(f"ClubBot does not start with {path} as it is: {exc}")
        return 1
    overridden = [name for name in WRITTEN if name in values and os.environ.get(name, values[name]) != values[name]]
    if overridden:
        say(f"Note: the environment sets {', '.join(overridden)}, and the environment wins over {path}: "
            f"check and ClubBot use its values.")
    say("Running check:\n")
    code = check(written)
    say()
    if code:
        say("check found the problems above; fix them, then run `python clubbot.py check` again.")
    if not values["WEBHOOK_URL"]:
        say("No domain yet: ClubBot confirms payments by asking Crypto Pay (polling), so you can sell now.\n"
            "To add the webhook later: point a domain at this server, put nginx with TLS in front (README:\n"
            "nginx), set WEBHOOK_URL=https://your-domain in .env (or run `python clubbot.py setup` again),\n"
            "restart ClubBot, and paste https://your-domain/webhook/cryptobot into @CryptoBot\n"
            "(Crypto Pay -> My Apps -> your app -> Webhooks).\n")
    folder = Path(os.path.abspath(path)).parent
    where = "" if folder == Path.cwd() else f" (in {folder}: ClubBot reads the .env of the folder it runs in)"
    say(f"Next, start ClubBot{where}:\n  python clubbot.py run")
    return code


# --- the terminal ---

class Terminal:
    """Questions to the owner; with --yes (unattended) none is asked: a default is taken, and an
    answer without one is an error naming its flag."""

    def __init__(self, unattended: bool):
        self.unattended = unattended

    def ask(self, question: str, flag: str, default: str | None = None, *, shown: str | None = None,
            secret: bool = False) -> str:
        """The answer typed, or `default` (shown as `shown`) on Enter."""
        if self.unattended:
            if default is None:
                raise SetupError(f"{flag} is needed (with --yes setup asks nothing)")
            return default
        hint = shown or default
        read = getpass.getpass if secret else input
        try:
            answer = read(f"{question}{f' [{hint}]' if hint else ''}: ").strip()
        except EOFError:
            raise SetupError(f"no answer to \"{question}\" (the input is closed): give {flag}") from None
        return answer or default or ""

    def confirm(self, question: str, flag: str, unattended_answer: bool) -> bool:
        if self.unattended:
            return unattended_answer
        while True:
            answer = self.ask(f"{question} (y/n)", flag, "n").lower()
            if answer in ("y", "yes", "n", "no"):
                return answer.startswith("y")


def checked(terminal: Terminal, question: str, flag: str, given: str | None, default: str | None,
            check: Callable[[str], T], *, secret: bool = False) -> T:
    """What `check` makes of an answer it accepts (it raises Refused with the reason). A flag's
    answer must pass at once; a typed one is asked again until it does; Enter takes `default`."""
    if given is not None:
        try:
            return check(given.strip())
        except Refused as exc:
            raise SetupError(f"{flag}: {exc}") from None
    while True:
        value = terminal.ask(question, flag, default, secret=secret, shown=mask(default) if secret else None)
        try:
            return check(value.strip())
        except Refused as exc:
            if terminal.unattended:
                raise SetupError(f"{flag}: {exc}") from None
            say(f"  {exc}")


def valid(name: str, value: str) -> Any:
    """`value` through the setting's own converter (config.SETTINGS); Refused with its reason."""
    try:
        return SETTINGS[name][0](value)
    except ValueError as exc:
        raise Refused(f"{name}: {exc}") from None


def setting(name: str, kept: dict[str, str]) -> Any:
    """A setting setup does not ask for, as ClubBot will read it: the environment, then .env."""
    raw = os.environ.get(name) or kept.get(name) or SETTINGS[name][1]
    try:
        return SETTINGS[name][0](raw)
    except ValueError as exc:
        raise SetupError(f"{name}: {exc}") from None


def id_list(name: str, text: str) -> str:
    """Comma-separated ids, checked as the setting `name` is, written back without spaces."""
    valid(name, text)
    return ",".join(item.strip() for item in text.split(",") if item.strip())


# --- 1. the bot ---

def _step_bot(terminal: Terminal, args: argparse.Namespace, kept: dict[str, str]) -> Telegram:
    api_url = setting("TELEGRAM_API_URL", kept)
    say("Make a bot with @BotFather (/newbot) if you have none; it gives you the bot's token.")

    def check(token: str) -> Telegram:
        valid("BOT_TOKEN", token)
        telegram = Telegram(api_url, token)
        telegram.sign_in()
        return telegram

    telegram = checked(terminal, "Bot token", "--bot-token", args.bot_token, kept.get("BOT_TOKEN") or None, check,
                       secret=True)
    say(f"  ok: the token {mask(telegram.token)} is the bot {telegram.name} (id {telegram.id})")
    return telegram


class Telegram:
    """The bot as setup sees it: who it is (getMe), its rights in a chat, and its updates, read by
    long polling in bounded waits; what one wait passes over stays for the next."""

    def __init__(self, api_url: str, token: str):
        self.api_url = api_url
        self.token = token
        self.bot = make_bot(token, api_url)
        self.id = 0
        self.username = ""
        self.offset: int | None = None
        self.kept: list[dict] = []
        self.since = time.time() - STALE_SECONDS
        self.failing = False

    @property
    def name(self) -> str:
        return f"@{self.username}"

    def sign_in(self) -> None:
        try:
            me = self.bot.get_me()
        except Exception as exc:
            code = exc.error_code if isinstance(exc, apihelper.ApiTelegramException) else None
            if code in (401, 404):
                raise Refused(f"Telegram refused the bot token {mask(self.token)} ({classify(exc).description}): "
                              f"copy it again from @BotFather") from None
            raise Refused(f"no answer from Telegram at {self.api_url} ({classify(exc).description})") from None
        self.id, self.username = me.id, me.username

    def rights(self, chat_id: int) -> tuple[types.Chat, list[str]]:
        """The chat (getChat) and what the bot lacks there (access.missing_rights' keys)."""
        try:
            chat = self.bot.get_chat(chat_id)
            member = self.bot.get_chat_member(chat_id, self.id)
        except Exception as exc:
            new_id = migrated_to(exc)
            if new_id is not None:
                raise SetupError(f"chat {chat_id} was upgraded to a supergroup and its id is now {new_id}: "
                                 f"give {new_id} instead") from None
            raise SetupError(f"chat {chat_id}: {classify(exc).description} "
                             f"(is {self.name} an administrator there?)") from None
        return chat, missing_rights(member, chat.type)

    def tell(self, user_id: int, text: str) -> None:
        """A message to the owner in Telegram; best effort (the terminal says it all too)."""
        try:
            self.bot.send_message(user_id, text)
        except Exception:
            pass

    def next_update(self, kind: str, deadline: float, accept: Callable[[dict], bool]) -> dict | None:
        """The first update of `kind` ("message", "my_chat_member") that `accept` takes, waited for
        until `deadline` (time.monotonic()); None when none came."""
        while True:
            for update in self.kept:
                item = update.get(kind)
                if isinstance(item, dict) and item.get("date", 0) >= self.since and accept(update):
                    self.kept.remove(update)
                    return update
            if time.monotonic() >= deadline:
                return None
            self.kept.extend(self._fetch(deadline))
            del self.kept[:-MAX_KEPT_UPDATES]

    def _fetch(self, deadline: float) -> list[dict]:
        long_poll = max(1, min(LONG_POLL_SECONDS, math.ceil(deadline - time.monotonic())))
        try:
            # No request timeout given: apihelper's connect timeout, and a read timeout above the long poll.
            updates = apihelper.get_updates(self.token, self.offset, 100, None, WATCHED_UPDATES, long_poll)
        except Exception as exc:
            self._fetch_failed(exc, deadline)
            return []
        self.failing = False
        if updates:
            self.offset = updates[-1]["update_id"] + 1
        return updates or []

    def _fetch_failed(self, exc: Exception, deadline: float) -> None:
        code = exc.error_code if isinstance(exc, apihelper.ApiTelegramException) else None
        description = classify(exc).description
        if code in (401, 404):
            raise SetupError(f"Telegram refused the bot token {mask(self.token)} while setup waited ({description})")
        if code == 409:
            raise SetupError(f"Telegram: {description}: another program reads {self.name}'s updates (a running "
                             f"ClubBot: stop it while setup runs), or the bot has a webhook set")
        if not self.failing:
            say(f"  Telegram getUpdates failed ({description}); trying again while the wait lasts")
            self.failing = True
        time.sleep(max(0.0, min(RETRY_SECONDS, deadline - time.monotonic())))

    def done_reading(self) -> None:
        """Confirm the updates read here to Telegram, so that the bot does not answer them again."""
        if self.offset is None:
            return
        try:
            # Telegram's timeout=0, sent directly: apihelper turns a long poll of 0 into 10 s.
            # Telegram keeps the last allowed_updates it was given: ClubBot's own, not setup's fewer.
            requests.get(f"{self.api_url}/bot{self.token}/getUpdates", timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                         params={"offset": self.offset, "limit": 1, "timeout": 0,
                                 "allowed_updates": json.dumps(ALLOWED_UPDATES)}).raise_for_status()
        except requests.RequestException:
            pass  # the running bot then sees them once more: a greeting, a note to the admins


# --- 2. the first admin ---

def _step_admins(terminal: Terminal, args: argparse.Namespace, kept: dict[str, str], telegram: Telegram,
                 seconds: int) -> str:
    if args.admin_id:
        return checked(terminal, "", "--admin-id", ",".join(args.admin_id), None,
                       lambda text: id_list("ADMIN_IDS", text))
    admins = kept_or_wait(terminal, "Admin user ids", "--admin-id", "ADMIN_IDS", kept)
    if admins is not None:
        return admins
    code = new_start_code()
    say(f"Open this link in Telegram, signed in as yourself (or send /start {code} to {telegram.name}):\n"
        f"  https://t.me/{telegram.username}?start={code}\n"
        f"whoever opens it becomes the bot's first admin: keep it to yourself.")
    say(f"Waiting for /start from you in {telegram.name} (up to {span(seconds)})...")
    noted: set[int] = set()

    def accept(update: dict) -> bool:
        payload = start_payload(update)
        if payload is None or payload == code:
            return payload == code
        if update["update_id"] not in noted:  # said once, though looked at on every pass
            noted.add(update["update_id"])
            say(f"  not taken: a /start without this link's code from {person_label(update['message']['from'])}")
        return False

    update = telegram.next_update("message", time.monotonic() + seconds, accept)
    if update is None:
        raise SetupError(f"nobody opened the link (/start {code}) in {telegram.name} within {span(seconds)}: "
                         f"run setup again, or give --admin-id YOUR_TELEGRAM_ID")
    sender = update["message"]["from"]
    say(f"  ok: {person_label(sender)} is the first admin")
    telegram.tell(sender["id"], "ClubBot setup: you are this bot's admin now. Go back to the terminal to finish.")
    return str(sender["id"])


def new_start_code() -> str:
    return secrets.token_urlsafe(START_CODE_BYTES)


def start_payload(update: dict) -> str | None:
    """What follows /start ("" for none) in a message from a person in their private chat with the
    bot; None for any other message. Opening t.me/BOT?start=CODE sends "/start CODE"."""
    message = update["message"]
    words = (message.get("text") or "").split()
    if (not words or re.fullmatch(r"/start(@\w+)?", words[0]) is None
            or (message.get("chat") or {}).get("type") != "private"
            or (message.get("from") or {}).get("is_bot", True)):
        return None
    return " ".join(words[1:])


def person_label(user: dict) -> str:
    """'Alice (@alice) (id 123)': a Telegram user as the terminal names them."""
    username = f" (@{user['username']})" if user.get("username") else ""
    return f"{user.get('first_name', '')}{username} (id {user.get('id')})"


def kept_or_wait(terminal: Terminal, question: str, flag: str, name: str, kept: dict[str, str]) -> str | None:
    """Ids kept from .env (Enter), or typed; None: none kept, or "wait" typed to take them from Telegram."""
    current = kept.get(name, "").strip()
    if not current:
        return None
    while True:
        answer = terminal.ask(f'{question} (Enter keeps them; "wait" to take them from Telegram)', flag, current)
        if answer.lower() == "wait":
            return None
        try:
            return id_list(name, answer)
        except Refused as exc:
            if terminal.unattended:
                raise SetupError(f"{flag}: {exc} (in .env)") from None
            say(f"  {exc}")


# --- 3. the club chats ---

def _step_chats(terminal: Terminal, args: argparse.Namespace, kept: dict[str, str], telegram: Telegram,
                seconds: int, admins: set[int]) -> str:
    bot = telegram.name
    say(f"Add {bot} as an administrator of each club channel or group (the chat's settings -> Administrators\n"
        f"-> Add Admin), with the rights \"Invite Users via Link\" and \"Ban Users\".")
    if args.chat_id:
        given = checked(terminal, "", "--chat-id", ",".join(args.chat_id), None,
                        lambda text: id_list("CLUB_CHAT_IDS", text))
    else:
        given = kept_or_wait(terminal, "Club chat ids", "--chat-id", "CLUB_CHAT_IDS", kept)
    chats = [_given_chat(telegram, int(chat_id), seconds, admins) for chat_id in (given or "").split(",") if chat_id]
    if args.chat_id:
        return ",".join(map(str, chats))
    while not chats or terminal.confirm("Another club chat?", "--chat-id", False):
        chats.append(_arriving_chat(telegram, seconds, admins, chats))
    return ",".join(map(str, chats))


def _given_chat(telegram: Telegram, chat_id: int, seconds: int, admins: set[int]) -> int:
    """A chat named by its id: checked (getChat, getChatMember); missing rights are waited for."""
    chat, missing = telegram.rights(chat_id)
    label = chat_label(chat_id, chat.title, chat.type)
    if not missing:
        say(f"  ok: {label}: {telegram.name} can invite and remove members")
        return chat_id
    problem = report_missing(telegram, label, missing, seconds)
    return _arriving_chat(telegram, seconds, admins, [], only=chat_id, problem=problem)


def _arriving_chat(telegram: Telegram, seconds: int, admins: set[int], listed: list[int], only: int | None = None,
                   problem: str | None = None) -> int:
    """The id of a chat where an admin (step 2) makes the bot an administrator with the rights it
    needs, as Telegram reports it (my_chat_member); a chat where it lacks some is named, and its fix
    waited for. What anyone else does to the bot is passed over: it neither chooses a chat nor
    makes the wait longer."""
    if problem is None:
        say(f"Waiting for {telegram.name} to be made an administrator of a chat (up to {span(seconds)})...")
    deadline = time.monotonic() + seconds
    noted: set[int] = set()

    def accept(update: dict) -> bool:
        if not is_club_event(update, listed, only):
            return False
        if only is not None or is_by_admin(update, admins):
            # In a chat the owner named by its id, the bot's rights may be fixed by any admin of it.
            return True
        if update["update_id"] not in noted:  # said once, though looked at on every pass
            noted.add(update["update_id"])
            event = update["my_chat_member"]
            chat = event["chat"]
            say(f"  not taken: {chat_label(chat['id'], chat.get('title'), chat.get('type'))}: the change there was "
                f"made by {person_label(event.get('from') or {})}, who is not an admin (step 2)")
        return False

    while True:
        update = telegram.next_update("my_chat_member", deadline, accept)
        if update is None:
            if problem:
                raise SetupError(f"{problem}, and no fix came within {span(seconds)}: fix it and run setup again")
            raise SetupError(f"{telegram.name} was not made an administrator of a chat within {span(seconds)}: "
                             f"run setup again, or give --chat-id ID")
        event = update["my_chat_member"]
        chat = event["chat"]
        label = chat_label(chat["id"], chat.get("title"), chat.get("type"))
        member = types.ChatMember.de_json(event["new_chat_member"])
        if member.status in ("left", "kicked"):
            say(f"  {telegram.name} left {label}")
            continue
        missing = missing_rights(member, chat.get("type"))
        if not missing:
            say(f"  ok: {label}: {telegram.name} can invite and remove members")
            return chat["id"]
        problem = report_missing(telegram, label, missing, seconds)
        deadline = time.monotonic() + seconds


def report_missing(telegram: Telegram, label: str, missing: list[str], seconds: int) -> str:
    """Say what the bot lacks in a chat, how to give it, and that the fix is waited for; the
    problem, for the line of a time-out."""
    problem = f"in {label}, {telegram.name}: " + "; ".join(texts.t("en", key) for key in missing)
    fixes = "; ".join(RIGHT_FIXES[key].format(bot=telegram.name) for key in missing)
    say(f"  {problem[0].upper()}{problem[1:]}.\n  To fix it: {fixes}.")
    say(f"  Waiting for the fix, as Telegram reports it (up to {span(seconds)})...")
    return problem


def chat_label(chat_id: int, title: str | None, chat_type: str | None) -> str:
    return f'"{title or "?"}" (id {chat_id}, {chat_type or "chat"})'


def is_club_event(update: dict, listed: list[int], only: int | None) -> bool:
    """The bot's status changed in a group or channel not taken yet (and the one awaited, if any)."""
    chat = update["my_chat_member"].get("chat") or {}
    return (chat.get("type") != "private" and chat.get("id") not in listed
            and (only is None or chat.get("id") == only))


def is_by_admin(update: dict, admins: set[int]) -> bool:
    """The change was made by one of the admins chosen in step 2, not by whoever added the bot."""
    return (update["my_chat_member"].get("from") or {}).get("id") in admins


# --- 4. Crypto Pay ---

def _step_crypto(terminal: Terminal, args: argparse.Namespace, kept: dict[str, str]) -> dict[str, str]:
    network = checked(terminal, "Network: mainnet (real money, @CryptoBot) or testnet (@CryptoTestnetBot)",
                      "--network", args.network, kept.get("CRYPTO_PAY_NETWORK") or "mainnet",
                      lambda text: valid("CRYPTO_PAY_NETWORK", text))
    where = "@CryptoTestnetBot" if network == "testnet" else "@CryptoBot"
    say(f"In {where}: Crypto Pay -> My Apps -> Create App (or your app) -> API Token."
        + (" A testnet app has its own token, not the mainnet one." if network == "testnet" else ""))
    api_url = setting("CRYPTO_PAY_API_URL", kept) or NETWORK_URLS[network]

    def check(token: str) -> tuple[str, dict]:
        valid("CRYPTO_PAY_TOKEN", token)
        return token, crypto_pay_app(api_url, network, token)

    token, app_info = checked(terminal, "Crypto Pay API token", "--pay-token", args.pay_token,
                              kept.get("CRYPTO_PAY_TOKEN") or None, check, secret=True)
    say(f"  ok: the token {mask(token)} is the app \"{app_info.get('name', '?')}\" on {network}")
    return {"CRYPTO_PAY_NETWORK": network, "CRYPTO_PAY_TOKEN": token}


def crypto_pay_app(api_url: str, network: str, token: str) -> dict:
    """Crypto Pay's getMe for this token: the app; Refused when the token is refused or no answer comes."""
    try:
        app_info = CryptoPay(api_url, token).get_me()
    except CryptoPayError as exc:
        if exc.is_auth_error:
            other = "a mainnet app's token does not work on testnet, nor the other way round"
            raise Refused(f"Crypto Pay refused the token {mask(token)} on {network} ({exc.name}): "
                          f"copy it again ({other})") from None
        raise Refused(f"no answer from Crypto Pay at {api_url} ({exc})") from None
    return app_info if isinstance(app_info, dict) else {}


# --- 5. plans and the domain ---

def _step_plans(terminal: Terminal, args: argparse.Namespace, kept: dict[str, str]) -> str:
    say("Plans: id:duration:amount:currency[:title], comma-separated; amount 0 makes a free trial (README: Plans).")

    def check(text: str) -> tuple[str, tuple[Plan, ...]]:
        plans = valid("PLANS", text)
        writable(text)
        return text, plans

    text, plans = checked(terminal, "Plans", "--plans", args.plans, kept.get("PLANS") or DEFAULT_PLANS, check)
    for plan in plans:
        price = "free, once per member" if plan.is_trial else f"{plan.amount} {plan.currency}"
        say(f"  {plan.id}: {format_duration(plan.duration)}, {price}" + (f" ({plan.title})" if plan.title else ""))
    return text


def writable(value: str) -> None:
    if UNSAFE.search(value):
        raise Refused("'#', quotes, backslashes, control characters and line separators cannot be written to "
                      ".env so that every tool reads it as ClubBot and systemd do; leave them out")


def _step_domain(terminal: Terminal, args: argparse.Namespace, kept: dict[str, str]) -> str:
    say("The public domain CryptoBot sends payments to (https, through nginx). Without one, payments are\n"
        "confirmed by polling Crypto Pay and you can sell now; the domain can be added later.")
    current = kept.get("WEBHOOK_URL", "").strip()
    keep = ' (Enter keeps it; "-" for none)' if current else " (Enter: none for now)"

    def check(text: str) -> str:
        if text and text == current:  # kept: as ClubBot takes it, a path after the domain too
            writable(text)
            return valid("WEBHOOK_URL", text)
        return webhook_url(text)

    return checked(terminal, f"Domain, like club.example.com{keep}", "--domain", args.domain, current, check)


def webhook_url(text: str) -> str:
    """'club.example.com' or 'https://club.example.com' -> WEBHOOK_URL; '' or '-': none."""
    if text.lower() in ("", "-", "none"):
        return ""
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme != "https":
        raise Refused(f"'{text}': CryptoBot calls only https:// URLs")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        raise Refused(f"'{text}': give the domain alone, like club.example.com (ClubBot adds /webhook/cryptobot)")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not DOMAIN.fullmatch(parts.hostname or "") or port == -1:
        raise Refused(f"'{text}' is not a domain name like club.example.com")
    return valid("WEBHOOK_URL", f"https://{parts.hostname}" + (f":{port}" if port else ""))


# --- 6. the file ---

def _prepare(path: Path, terminal: Terminal) -> tuple[dict[str, str], list[str], Path]:
    """The values and lines of an existing .env, once the owner agrees to replace it (none and
    HEADER for a new one), and the database it names (never to be written over)."""
    database = Path(SETTINGS["DATABASE_PATH"][1])
    if not os.path.lexists(path):
        _check_target(path, database)
        return {}, list(HEADER), database
    try:
        kept = config_module.read_env_file(path)
        lines = env_lines(path.read_text(encoding="utf-8"))
    except ConfigError as exc:
        raise SetupError(f"{exc}: fix that line, or move {path} away, then run setup again") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SetupError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    database = Path(kept.get("DATABASE_PATH") or database)
    _check_target(path, database)
    say(f"{path} exists: setup offers each of its values again (Enter keeps it) and keeps its other lines.")
    if not terminal.confirm(f"Replace {path} when setup is done?", "--yes", True):
        raise SetupError(f"{path} is left as it is")
    return kept, lines, database


def _check_target(path: Path, database: Path) -> None:
    try:
        files.check_target(path, database, "setup", b"")
    except files.OutputError as exc:
        raise SetupError(str(exc)) from None


def env_lines(text: str) -> list[str]:
    """The lines of a .env as ClubBot's reader takes them (config.read_env_file): split at "\n"
    alone (never at U+2028 and the like, which str.splitlines() would split at), a "\r" before it
    left in its line as the reader leaves it."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def render(lines: list[str], values: dict[str, str]) -> str:
    """The .env text: `lines` (an old file's, or HEADER) with each setting of `values` written in its
    place (a repeated one dropped) and the new ones after; every other line kept as it is."""
    ordered = {name: values[name] for name in WRITTEN if name in values}
    out: list[str] = []
    done: set[str] = set()
    for line in lines:
        match = ENV_KEY.match(line)
        name = match.group(1) if match else None
        if name in ordered:
            if name not in done:
                out.append(f"{name}={ordered[name]}")
                done.add(name)
            continue
        out.append(line)
    out += [f"{name}={value}" for name, value in ordered.items() if name not in done]
    return "\n".join(out) + "\n"


# A .env replaced keeps its owner (when setup runs as root), its group and at most these bits of
# its mode: README's deployment makes it root:clubbot 0640, for the service's user to read; an
# owner may make it clubbot:clubbot 0600. Never readable by everyone.
KEPT_MODE_BITS = 0o640


def write_env(path: Path, database: Path, text: str, written: list[os.stat_result]) -> None:
    """Write `.env` beside it as `.env.partial`, renamed into place (files.write_output): Ctrl-C or
    a crash leaves the old file, or none, never half of one. A new file is 0600. The file written
    is added to `written` before it is renamed into place (it is .env once `path` is that file)."""
    try:
        old = os.stat(path)
    except OSError:
        old = None
    lost: list[str] = []  # why the old file's owner could not be kept

    def write(fd: int, _partial: Path) -> None:
        written.append(os.fstat(fd))
        if old is not None:
            reason = keep_owner(fd, old)
            if reason:
                lost.append(reason)
            os.fchmod(fd, stat.S_IMODE(old.st_mode) & KEPT_MODE_BITS | files.PRIVATE_FILE)
        with open(fd, "w", encoding="utf-8", closefd=False) as stream:
            stream.write(text)

    try:
        files.write_output(path, database, "setup", b"", write)
    except files.OutputError as exc:
        raise SetupError(str(exc)) from None
    if old is not None and lost:
        owner = f"{user_name(old.st_uid)}:{group_name(old.st_gid)}"
        say(f"Note: {path} belonged to {owner}, and the new one could not keep that ({lost[0]}): if ClubBot "
            f"reads it as that user, give it back (chown {owner} {path}).")


def keep_owner(fd: int, old: os.stat_result) -> str | None:
    """Give the file `fd` the owner and the group of the file it replaces: both as root, the group
    alone otherwise (as its member may). None when both are kept; else why not."""
    root = os.geteuid() == 0
    try:
        os.fchown(fd, old.st_uid if root else -1, old.st_gid)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    else:
        reason = "only root gives a file to another user"
    now = os.fstat(fd)
    return None if (now.st_uid, now.st_gid) == (old.st_uid, old.st_gid) else reason


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
