"""ClubBot: sell time-limited membership in a private Telegram club for crypto.

The entry point: the command line, wiring the threads together, signals.
`python clubbot.py --help` lists the commands.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable

import requests

import config as config_module
from config import Config, ConfigError
from cryptopay import CryptoPayError, signature
from runtime import App, build_app, setup_logging

log = logging.getLogger("clubbot")

STOP_HTTP_SECONDS = 4
STOP_UPDATES_SECONDS = 2


def serve(app: App, with_bot: bool, with_http: bool) -> int:
    """Run until SIGTERM or SIGINT; then finish what is in flight and return 0."""
    from handlers import register_handlers
    from tg import RateLimiter, make_bot
    from webhook_server import ServerThread, create_server
    from workers import Poller, Sender, Sweeper, UpdatePoller, start_thread

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
                 app.config.webhook_port, app.config.public_webhook_url or "/webhook/cryptobot")
    updates = None
    workers: list[threading.Thread] = []
    if with_bot:
        app.bot = make_bot(app.config.bot_token, app.config.telegram_api_url)
        app.limiter = RateLimiter(app.config.telegram_rate)
        register_handlers(app.bot, app)
        _learn_bot(app)
        updates = UpdatePoller(app)
        workers = [start_thread("sender", Sender(app).run), start_thread("poller", Poller(app).run),
                   start_thread("sweeper", Sweeper(app).run), start_thread("updates", updates.run)]
    log.info("ClubBot started (%s)", " + ".join(
        name for name, on in (("bot", with_bot), ("HTTP server", with_http)) if on))
    while not app.stop.wait(1.0):
        pass
    if http is not None:
        http.stop(STOP_HTTP_SECONDS)
    if updates is not None:
        updates.shutdown(STOP_UPDATES_SECONDS)
    for thread in workers:
        thread.join(0.5)
    log.info("ClubBot stopped")
    return 0


def _learn_bot(app: App) -> None:
    """The bot's username (for the invoice's return button) and the club chats' titles."""
    from tg import classify

    try:
        me = app.bot.get_me()
        app.bot_username, app.bot_id = me.username, me.id
        log.info("Telegram: signed in as @%s", me.username)
    except Exception as exc:
        failure = classify(exc)
        if "401" in failure.description:
            log.error("Telegram refused BOT_TOKEN (%s): check the token from @BotFather", failure.description)
        else:
            log.warning("Telegram getMe failed: %s (will keep trying)", failure.description)
    for chat_id in app.config.club_chat_ids:
        try:
            chat = app.bot.get_chat(chat_id)
            app.chat_titles[chat_id] = chat.title or ""
            app.chat_types[chat_id] = chat.type
        except Exception as exc:
            log.warning("Telegram getChat %s failed: %s", chat_id, classify(exc).description)


# --- commands ---

def cmd_run(config: Config, args: argparse.Namespace) -> int:
    return serve(_open(config), with_bot=True, with_http=True)


def cmd_bot(config: Config, args: argparse.Namespace) -> int:
    return serve(_open(config), with_bot=True, with_http=False)


def cmd_webhook(config: Config, args: argparse.Namespace) -> int:
    return serve(_open(config), with_bot=False, with_http=True)


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


def _open(config: Config) -> App:
    try:
        return build_app(config)
    except (sqlite3.Error, OSError) as exc:
        raise CommandError(f"cannot open the database {config.database_path}: {exc}") from None


class CommandError(Exception):
    """A command failed in a way the owner can fix; printed as one line, exit 1."""


COMMANDS: dict[str, tuple[Callable[[Config, argparse.Namespace], int], str]] = {
    "run": (cmd_run, "everything in one process: bot, HTTP server, poller, sender (the default)"),
    "bot": (cmd_bot, "everything but the HTTP server"),
    "webhook": (cmd_webhook, "the HTTP server alone (same as `python webhook_server.py`)"),
    "ping-webhook": (cmd_ping_webhook, "send a correctly signed sample invoice_paid update and print the answer"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clubbot.py",
        description="ClubBot sells membership in a private Telegram club for crypto (Crypto Pay). "
                    "Settings come from the environment and .env; see README.md.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_func, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == "ping-webhook":
            command.add_argument("url", nargs="?", help="webhook URL (default: the local server)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    command = args.command or "run"
    try:
        config = config_module.load()
    except ConfigError as exc:
        print(f"clubbot: config error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config)
    try:
        return COMMANDS[command][0](config, args)
    except CommandError as exc:
        log.error("%s", exc)
        return 1
    except CryptoPayError as exc:
        log.error("Crypto Pay: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
