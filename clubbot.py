"""ClubBot: sell time-limited membership in a private Telegram club for crypto.

The entry point: the command line, wiring the threads together, signals.
`python clubbot.py --help` lists the commands.
"""
from __future__ import annotations

import sys

# Before any import that an older Python fails on: one line instead of a traceback. Keep the
# file to here readable by Python 3.8 (tests/test_cli.py checks it).
if sys.version_info < (3, 11):  # noqa: UP036 (for the Pythons that ruff's target leaves out)
    sys.exit(f"ClubBot needs Python 3.11 or newer; this is {'.'.join(map(str, sys.version_info[:3]))} "
             f"(see README: Deployment)")

import argparse
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import requests

import config as config_module
import files
from config import Config, ConfigError
from cryptopay import CryptoPay, CryptoPayError, signature
from runtime import App, WrongNetwork, build_app, setup_logging, wrong_network

if TYPE_CHECKING:
    from updates import UpdatePoller

log = logging.getLogger("clubbot")
T = TypeVar("T")

# `--version`; CHANGELOG.md's next release takes this number.
__version__ = "0.9.0"

STOP_SECONDS = 8.5
STOP_HTTP_SECONDS = 4
STOP_WORKERS_SECONDS = 1.5
# Bot API calls in flight at once (to different chats), within the shared TELEGRAM_RATE.
SENDER_LANES = 4
STOP_UPDATES_SECONDS = 2


def serve(app: App, with_bot: bool, with_http: bool) -> int:
    """Run until SIGTERM or SIGINT; then finish what is in flight and return 0."""
    from webhook_server import ServerThread, create_server

    def on_signal(signum: int, _frame) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        app.stop.set()
        app.outbox_ready.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    http = None
    if with_http:
        try:
            server = create_server(app)
        except OSError as exc:
            raise CommandError(f"cannot listen on {app.config.webhook_host}:{app.config.webhook_port} "
                               f"(WEBHOOK_HOST, WEBHOOK_PORT): {exc.strerror or exc}") from None
        http = ServerThread(server).start()
        log.info("HTTP server listening on http://%s:%s (webhook at %s)", app.config.webhook_host,
                 app.config.webhook_port, app.config.public_webhook_url or app.config.webhook_path)
    updates, workers = _start_bot(app) if with_bot else (None, [])
    log.info("ClubBot started (%s)", " + ".join(
        name for name, on in (("bot", with_bot), ("HTTP server", with_http)) if on))
    while not app.stop.wait(1.0):
        pass
    # Everything below shares one deadline, inside the 10 s that SIGTERM promises.
    deadline = time.monotonic() + STOP_SECONDS
    if http is not None:
        http.stop(min(STOP_HTTP_SECONDS, deadline - time.monotonic()))
    if updates is not None:
        updates.shutdown(max(0.1, min(STOP_UPDATES_SECONDS, deadline - time.monotonic() - 3)))
    # Workers finish a transaction in milliseconds; one waiting on Telegram or Crypto Pay is
    # left behind (its work is still queued in the database, and comes again at start).
    joined_by = min(deadline, time.monotonic() + STOP_WORKERS_SECONDS)
    for thread in workers:
        thread.join(max(0.0, joined_by - time.monotonic()))
    app.heartbeats.forget()  # stopped on purpose: nothing for another process to report
    log.info("ClubBot stopped")
    return 0


def _start_bot(app: App) -> tuple[UpdatePoller, list[threading.Thread]]:
    """The bot's side: the TeleBot and its budget, the handlers, and the background threads,
    watched by /health. Returns Telegram's update poller and the threads joined at stop."""
    from handlers import register_handlers
    from health import silence_bounds
    from outbox import Sender
    from tg import RateLimiter, make_bot
    from updates import UpdatePoller
    from workers import Poller, Sweeper, start_thread

    app.bot = make_bot(app.config.bot_token, app.config.telegram_api_url)
    app.limiter = RateLimiter(app.config.telegram_rate)
    register_handlers(app.bot, app)
    # In the background: with Telegram slow or unreachable, start-up must not hold off SIGTERM.
    start_thread("learn", lambda: _learn_bot(app))
    updates = UpdatePoller(app)
    workers = [start_thread("sender", Sender(app, lanes=SENDER_LANES).run), start_thread("poller", Poller(app).run),
               start_thread("sweeper", Sweeper(app).run)]
    # Not joined at stop: it may sit in a long poll; what it handled is confirmed in shutdown().
    watched = [*workers, start_thread("updates", updates.run)]
    # Written to the database too: the split setup's /health and `check` run in other processes.
    app.heartbeats.share(app.db)
    bounds = silence_bounds(app.config)
    for thread in watched:
        app.heartbeats.register(thread.name, bounds[thread.name], thread)
    return updates, workers


def _learn_bot(app: App) -> None:
    """The bot's username (for the invoice's return button) and the club chats' titles, asked
    once at start (tg.learn_bot, tg.learn_chat; what fails here is asked again when needed)."""
    from tg import Stopping, classify, learn_chat

    try:
        _sign_in(app)
        for chat_id in app.club_chats():
            try:
                learn_chat(app, chat_id)  # a group upgraded meanwhile is followed to its new id
            except Exception as exc:
                log.warning("Telegram getChat %s failed: %s", chat_id, classify(exc).description)
    except Stopping:
        pass  # SIGTERM came during start-up


def _sign_in(app: App) -> None:
    """getMe: the bot's id and username; a token Telegram refuses is said plainly."""
    from tg import classify, learn_bot

    try:
        learn_bot(app)
    except Exception as exc:
        failure = classify(exc)
        if "401" in failure.description:
            log.error("Telegram refused BOT_TOKEN (%s): check the token from @BotFather", failure.description)
        else:
            log.warning("Telegram getMe failed: %s (will keep trying)", failure.description)
        return
    log.info("Telegram: signed in as @%s", app.bot_username)


# --- commands ---

def cmd_run(config: Config, args: argparse.Namespace) -> int:
    return serve(_open(config, create=True), with_bot=True, with_http=True)


def cmd_bot(config: Config, args: argparse.Namespace) -> int:
    return serve(_open(config, create=True), with_bot=True, with_http=False)


def cmd_webhook(config: Config, args: argparse.Namespace) -> int:
    return serve(_open(config, create=True), with_bot=False, with_http=True)


def cmd_ping_webhook(config: Config, args: argparse.Namespace) -> int:
    host = "127.0.0.1" if config.webhook_host in ("0.0.0.0", "::") else config.webhook_host
    url = args.url or f"http://{host}:{config.webhook_port}{config.webhook_path}"
    body = json.dumps({
        "update_id": 1, "update_type": "invoice_paid",
        "request_date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "payload": {"invoice_id": 999999999999, "status": "paid", "asset": "USDT", "amount": "1",
                    "payload": "clubbot-ping"},
    }, separators=(",", ":")).encode()
    try:
        response = requests.post(url, data=body, timeout=(5, 15), headers={
            "Content-Type": "application/json",
            "crypto-pay-api-signature": signature(config.crypto_pay_token, body)})
    except requests.RequestException as exc:
        print(f"{url}: no answer ({type(exc).__name__})")
        return 1
    print(f"{url}: HTTP {response.status_code} {response.text.strip()}")
    if response.status_code == 200:
        print("The webhook answers and accepts correctly signed updates.")
        return 0
    if response.status_code == 401:
        print("The server refused the signature: is CRYPTO_PAY_TOKEN the same on both sides?")
    return 1


def cmd_check(config: Config, args: argparse.Namespace) -> int:
    """Config, both APIs, the bot's rights in each club chat, and the URL to paste into @CryptoBot."""
    import texts
    from access import missing_rights
    from tg import classify, make_bot, migrated_to

    problems: list[str] = []

    def report(ok: bool, line: str) -> None:
        print(("ok    " if ok else "FAIL  ") + line)
        if not ok:
            problems.append(line)

    plans = ", ".join(f"{p.id} ({p.amount} {p.currency})" for p in config.plans)
    report(True, f"config: {len(config.plans)} plan(s): {plans}; {len(config.club_chat_ids)} club chat(s); "
                 f"{len(config.admin_ids)} admin(s)")
    bot = make_bot(config.bot_token, config.telegram_api_url)
    me = None
    try:
        me = bot.get_me()
        report(True, f"Telegram: signed in as @{me.username} (id {me.id})")
    except Exception as exc:
        report(False, f"Telegram getMe: {classify(exc).description} (check BOT_TOKEN and TELEGRAM_API_URL)")
    try:
        app_info = CryptoPay(config.crypto_pay_api_url, config.crypto_pay_token).get_me()
        report(True, f"Crypto Pay: app \"{app_info.get('name', '?')}\" on {config.crypto_pay_network} "
                     f"({config.crypto_pay_api_url})")
    except CryptoPayError as exc:
        hint = "check CRYPTO_PAY_TOKEN and CRYPTO_PAY_NETWORK" if exc.is_auth_error else "is the API reachable?"
        report(False, f"Crypto Pay getMe: {exc} ({hint})")
    if me is not None:
        for chat_id in config.club_chat_ids:
            try:
                chat = bot.get_chat(chat_id)
                member = bot.get_chat_member(chat_id, me.id)
            except Exception as exc:
                new_id = migrated_to(exc)
                if new_id is not None:
                    report(False, f"chat {chat_id} was upgraded to a supergroup and its id is now {new_id}: "
                                  f"write {new_id} instead of {chat_id} in CLUB_CHAT_IDS")
                else:
                    report(False, f"chat {chat_id}: {classify(exc).description} (is the bot an admin there?)")
                continue
            missing = missing_rights(member, chat.type)
            report(not missing, f"chat {chat_id} \"{chat.title}\" ({chat.type}): " + (
                "the bot can invite and remove members" if not missing
                else "; ".join(texts.t("en", key) for key in missing)))
    _check_heartbeats(config, report)
    _check_webhook(config, report)
    if problems:
        print(f"{len(problems)} problem(s) found.")
        return 1
    print("All well.")
    return 0


def _check_webhook(config: Config, report: Callable[[bool, str], None]) -> None:
    """Which way payments arrive, and the webhook URL to paste into @CryptoBot."""
    from payments import poll_every

    if not config.webhook_url:
        print(f"mode  selling by polling: no WEBHOOK_URL, so pending invoices are checked every "
              f"{poll_every(config)}s (set WEBHOOK_URL once DNS and TLS are ready)")
    elif not config.webhook_url.startswith("https://"):
        report(False, f"WEBHOOK_URL {config.webhook_url}: CryptoBot calls only https:// URLs")
    else:
        print(f"mode  webhook, with polling every {poll_every(config)}s for what it misses")
        print(f"\nPaste this URL into @CryptoBot (Crypto Pay -> My Apps -> your app -> Webhooks):\n"
              f"  {config.public_webhook_url}\n")


def _check_heartbeats(config: Config, report: Callable[[bool, str], None]) -> None:
    """The running bot's workers, by the signs of life they write to the database."""
    from db import Database
    from health import read_shared

    # Not opened through build_app: `check` runs before the first start, and must not create the database.
    if not config.database_path.exists():
        print(f"note  no running bot found (no database yet): DATABASE_PATH is {config.database_path.absolute()}")
        return
    database = Database(config.database_path)
    try:
        beats = read_shared(database, time.time())
        network = database.network()
    except sqlite3.Error as exc:
        report(False, f"database {config.database_path}: {exc}")
        return
    finally:
        database.close()
    if network is not None and network != config.crypto_pay_network:
        report(False, wrong_network(config, network))
    if not beats:
        print("note  no running bot found (it writes signs of life to the database while it runs)")
    for beat in beats:
        report(not beat.late, "worker " + beat.text() + (": hung, or killed without a clean stop (see the log)"
                                                        if beat.late else ""))


def cmd_setup(config: Config | None, args: argparse.Namespace) -> int:
    """The wizard (wizard.py): from nothing to a working .env, then `check` on what it wrote.
    It needs no config to start: it makes one."""
    import wizard

    return wizard.run(args, check=lambda written: cmd_check(written, args))


def cmd_stats(config: Config, args: argparse.Namespace) -> int:
    import admin

    app = _open(config)
    print(admin.stats_text(app.db, app.now(), "en"))
    return 0


def cmd_referrals(config: Config, args: argparse.Namespace) -> int:
    import admin

    app = _open(config)
    print(admin.referrers_text(app.db, "en", config.referral_bonus, limit=args.top))
    return 0


def cmd_grant(config: Config, args: argparse.Namespace) -> int:
    import admin

    app = _open(config)
    try:
        print(admin.grant(app.db, args.user, args.duration, app.now(), "cli", "en"))
    except admin.AdminError as error:
        raise CommandError(error.text("en")) from None
    print("The member is told by the running bot.")
    return 0


def cmd_revoke(config: Config, args: argparse.Namespace) -> int:
    import admin

    app = _open(config)
    try:
        print(admin.revoke(app.db, args.user, app.now(), "cli", "en"))
    except admin.AdminError as error:
        raise CommandError(error.text("en")) from None
    return 0


def cmd_code(config: Config, args: argparse.Namespace) -> int:
    """code add NAME ..., code list, code disable NAME: the same words as the admins' /code."""
    import admin

    app = _open(config)
    words = args.words
    try:
        if args.action == "add":
            print(admin.code_add(app.db, config, words, app.now(), "cli", "en", app.bot_username))
        elif args.action == "disable" and len(words) == 1:
            print(admin.code_disable(app.db, words[0], app.now(), "cli", "en"))
        elif args.action == "list" and not words:
            print(admin.codes_text(app.db, app.now(), "en"))
        else:
            raise admin.AdminError("admin_usage_code")
    except admin.AdminError as error:
        raise CommandError(error.text("en").replace("/codes", "code list").replace("/code", "code")) from None
    return 0


def cmd_gift(config: Config, args: argparse.Namespace) -> int:
    """gift create --plan ID --count N [--out FILE]: the links as CSV; gift list: who redeemed which."""
    import gifts

    app = _open(config)
    if args.action == "list":
        print("\n".join(gifts.list_lines(app.db)) or "No gift links yet.")
        return 0
    if args.plan is None or args.count is None:
        raise CommandError("gift create needs --plan ID and --count N")
    now = app.now()
    try:
        plan, made = gifts.make(config, args.plan, args.count)
    except gifts.GiftError as error:
        raise CommandError(str(error)) from None
    if not args.out or args.out == "-":
        gifts.store(app.db, plan, made, now, "cli")
        gifts.write_csv(sys.stdout, made, args.plan, now, app.bot_username)
        return 0
    target = Path(args.out)
    if os.path.lexists(target):  # it would hold links still redeemable, lost with it
        raise CommandError(f"gift create: {target} exists, and gift links are never written over; "
                           f"choose a new file")

    def write(fd: int, _partial: Path) -> int:
        with open(fd, "w", encoding="utf-8", newline="", closefd=False) as stream:
            return gifts.write_csv(stream, made, args.plan, now, app.bot_username)

    # The file first: a link must not work unless someone has it.
    rows = _write_output(target, config, "gift create", gifts.csv_header(), write)
    gifts.store(app.db, plan, made, now, "cli")
    print(f"gift create: {rows} links written to {target}", file=sys.stderr)
    return 0


def cmd_refund(config: Config, args: argparse.Namespace) -> int:
    """refund PAYMENT [--yes]: the same refund as the admins' /refund, asked on the terminal."""
    import admin
    import refunds
    from tg import RateLimiter, make_bot

    app = _open(config)
    try:
        row = refunds.find(app, args.payment)
    except admin.AdminError as error:
        raise CommandError(error.text("en").replace("/user", "/user in Telegram")) from None
    ask = refunds.question(app, row, "en")
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"{ask}\nNo terminal to confirm on: nothing was refunded; add --yes to refund "
                               f"without asking")
        if input(f"{ask} [y/N] ").strip().lower() not in ("y", "yes"):
            print("Cancelled: nothing was refunded.")
            return 1
    if app.bot is None:
        app.bot = make_bot(config.bot_token, config.telegram_api_url)
        app.limiter = RateLimiter(config.telegram_rate)
    result = refunds.run(app, row, "cli")
    text = refunds.result_text(app, result, "en")
    if result.status != "done":
        raise CommandError(text)
    print(text.replace("The member is told.", "The member is told by the running bot."))
    return 0


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    import admin

    app = _open(config)

    def progress(rows: int) -> None:
        print(f"export: {rows} rows...", file=sys.stderr)

    if not args.file or args.file == "-":
        admin.write_csv(app.db, sys.stdout, progress)
        return 0
    target = Path(args.file)

    def write(fd: int, _partial: Path) -> int:
        with open(fd, "w", encoding="utf-8", newline="", closefd=False) as stream:
            return admin.write_csv(app.db, stream, progress)

    rows = _write_output(target, config, "export", admin.export_header(), write)
    print(f"export: {rows} rows written to {target}", file=sys.stderr)
    return 0


def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    app = _open(config)
    target = Path(args.file)
    shown = [-1]

    def progress(status: int, remaining: int, total: int) -> None:
        percent = 100 * (total - remaining) // max(total, 1)
        if percent // 10 != shown[0] // 10:
            shown[0] = percent
            print(f"backup: {percent}% of {total} pages", file=sys.stderr)

    # sqlite opens the 0600 file made for it, and gives its journal the same mode.
    _write_output(target, config, "backup", files.SQLITE_SIGNATURE,
                  lambda _fd, partial: app.db.backup(partial, progress))
    print(f"backup: {target} ({target.stat().st_size} bytes), consistent as of now", file=sys.stderr)
    return 0


def _write_output(target: Path, config: Config, what: str, signature: bytes,
                  write: Callable[[int, Path], T]) -> T:
    try:
        return files.write_output(target, config.database_path, what, signature, write)
    except files.OutputError as exc:
        raise CommandError(str(exc)) from None


def _open(config: Config, create: bool = False) -> App:
    """The App over the database; only the services `create` it. An owner's tool run from
    another folder would otherwise make an empty one there, and report no members."""
    if not create and not config.database_path.exists():
        raise CommandError(f"no database at {config.database_path.absolute()} (DATABASE_PATH); "
                           f"run ClubBot there first, or cd to its folder")
    try:
        return build_app(config)
    except WrongNetwork as exc:
        raise CommandError(str(exc)) from None
    except (sqlite3.Error, OSError) as exc:
        raise CommandError(f"cannot open the database {config.database_path}: {exc}") from None


class CommandError(Exception):
    """A command failed in a way the owner can fix; printed as one line, exit 1."""


class Command(NamedTuple):
    """One command of the CLI: what runs it, its help, its arguments (name, argparse options)."""

    run: Callable[[Config | None, argparse.Namespace], int]
    help: str
    arguments: tuple[tuple[str, dict], ...] = ()
    service: bool = False  # a long-running process: it logs to LOG_FILE too
    needs_config: bool = True  # False: runs before there is a config (setup writes it) and is given None


USER = ("user", {"help": "Telegram id or @username"})


def _count(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from `low` to `high`, or a clear error."""
    def convert(text: str) -> int:
        if not (text.isascii() and text.isdecimal()) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"'{text[:20]}' is not a whole number from {low} to {high}")
        return int(text)
    return convert
SETUP_FLAGS = (
    ("--bot-token", {"metavar": "TOKEN", "help": "the bot's token, from @BotFather"}),
    ("--admin-id", {"metavar": "ID", "action": "append",
                    "help": "the admins' Telegram user ids (repeatable or comma-separated; "
                            "default: whoever sends /start to the bot)"}),
    ("--chat-id", {"metavar": "ID", "action": "append",
                   "help": "the club chats' ids (repeatable or comma-separated; default: the chats "
                           "the bot is made an administrator of)"}),
    ("--network", {"help": "mainnet or testnet (default: mainnet)"}),
    ("--pay-token", {"metavar": "TOKEN", "help": "the Crypto Pay app's API token"}),
    ("--plans", {"help": "id:duration:amount:currency[:title],... (default: month:30d:5:USDT,year:365d:50:USDT)"}),
    ("--domain", {"help": "the public domain for CryptoBot's webhook, like club.example.com (\"\": none, "
                          "payments are then confirmed by polling)"}),
    ("--yes", {"action": "store_true",
               "help": "ask nothing: replace an existing .env keeping its values, take the defaults"}),
    ("--env-file", {"metavar": "PATH", "default": ".env", "help": "the file to write (default: .env here)"}),
    ("--wait", {"metavar": "DURATION", "default": "5m",
                "help": "how long each wait for Telegram (/start, a chat) lasts (default: 5m)"}),
)

COMMANDS: dict[str, Command] = {
    "run": Command(cmd_run, "everything in one process: bot, HTTP server, poller, sweep, sender (the default)",
                   service=True),
    "bot": Command(cmd_bot, "everything but the HTTP server", service=True),
    "webhook": Command(cmd_webhook, "the HTTP server alone (same as `python webhook_server.py`)", service=True),
    "setup": Command(cmd_setup, "the setup wizard: from nothing to a working, checked .env "
                                "(every answer can be given as a flag)", SETUP_FLAGS, needs_config=False),
    "check": Command(cmd_check, "check the config, both APIs and the bot's rights; print the webhook URL to paste"),
    "stats": Command(cmd_stats, "members, revenue and pending invoices"),
    "grant": Command(cmd_grant, "give a member time by hand: grant USER DURATION (USER: id or @username)",
                     (USER, ("duration", {"help": "like 30d, 12h, 90m"}))),
    "revoke": Command(cmd_revoke, "end a member's time now and remove them: revoke USER", (USER,)),
    "code": Command(cmd_code, "discount codes: code add NAME (--percent P | --off AMOUNT) [--plans a,b] [--uses N] "
                              "[--until YYYY-MM-DD] [--first-payment-only], code list, code disable NAME",
                    (("action", {"choices": ["add", "list", "disable"]}),
                     ("words", {"nargs": argparse.REMAINDER, "help": "NAME and the options"}))),
    "gift": Command(cmd_gift, "gift links: gift create --plan ID --count N [--out FILE] (single-use links, as CSV), "
                              "gift list",
                    (("action", {"choices": ["create", "list"]}),
                     ("--plan", {"metavar": "ID", "help": "the plan whose time each link gives"}),
                     ("--count", {"metavar": "N", "type": int, "help": "how many links (1 to 10000)"}),
                     ("--out", {"metavar": "FILE", "help": "CSV file to write (default: stdout)"}))),
    "referrals": Command(cmd_referrals, "the top referrers: members referred, of them paid, time earned",
                         (("--top", {"metavar": "N", "type": _count(1, 1000), "default": 20,
                                     "help": "how many to show, 1 to 1000 (default: 20)"}),)),
    "refund": Command(cmd_refund, "refund a paid payment and take back the time it bought: refund PAYMENT "
                                  "(its Crypto Pay invoice id or Stars charge id) [--yes]",
                      (("payment", {"help": "the Crypto Pay invoice id, or the Stars charge id"}),
                       ("--yes", {"action": "store_true", "help": "refund without asking"}))),
    "export": Command(cmd_export, "members and payments as CSV, to FILE or stdout",
                      (("file", {"nargs": "?", "help": "CSV file to write (default: stdout)"}),)),
    "backup": Command(cmd_backup, "a consistent copy of the database, safe while the bot runs",
                      (("file", {"help": "the copy to write"}),)),
    "ping-webhook": Command(cmd_ping_webhook, "send a correctly signed sample invoice_paid update and print the answer",
                            (("url", {"nargs": "?", "help": "webhook URL (default: the local server)"}),)),
}


SETTINGS_HELP = "Settings come from the environment and .env; see README.md."


def build_parser() -> argparse.ArgumentParser:
    parser = _parser("clubbot.py", "ClubBot sells membership in a private Telegram club for crypto (Crypto Pay).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        subparser = sub.add_parser(name, help=command.help, description=command.help)
        for argument, options in command.arguments:
            subparser.add_argument(argument, **options)
    return parser


def build_webhook_parser() -> argparse.ArgumentParser:
    """`python webhook_server.py`: the webhook command as a script of its own, under its own name."""
    parser = _parser("webhook_server.py", "ClubBot's HTTP server alone (GET /health, POST /webhook/cryptobot), "
                                          "for the split setup beside `clubbot.py bot`; the same as "
                                          "`clubbot.py webhook`.")
    parser.set_defaults(command="webhook")
    return parser


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=f"{description} {SETTINGS_HELP}")
    parser.add_argument("--version", action="version", version=f"ClubBot {__version__}")
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command or "run"
    if not COMMANDS[command].needs_config:
        try:
            return COMMANDS[command].run(None, args)
        except CommandError as exc:
            return _failed(command, str(exc))
    try:
        config = config_module.load()
    except ConfigError as exc:
        print(f"clubbot: config error: {exc}", file=sys.stderr)
        return 2
    # The services log to LOG_FILE too; the owner's tools speak on the terminal only.
    setup_logging(config, to_file=COMMANDS[command].service)
    try:
        return COMMANDS[command].run(config, args)
    except CommandError as exc:
        return _failed(command, str(exc))
    except CryptoPayError as exc:
        return _failed(command, f"Crypto Pay: {exc}")


def _failed(command: str, error: str) -> int:
    """Exit code 1, with the error in the log (the services) or as one plain line (the owner's tools)."""
    if COMMANDS[command].service:
        log.error("%s", error)
    else:
        print(f"error: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
