"""What the tests hand to ClubBot, built in one place: Telegram updates (fed to the handlers
in process, or pushed to the fake Bot API for a real process to fetch), Crypto Pay webhook
bodies, and members who bought a plan at the fake Crypto Pay, paid it, or have time.

Updates are built without an update_id: feed() and FakeTelegram.push_update() number them.
"""
from __future__ import annotations

import itertools
import json
import time
from typing import TYPE_CHECKING

from conftest import ADMIN, CLUB_CHAT, START
from fakes import chat_member, pre_checkout_query, successful_payment_message
from telebot import types

import gifts
from config import STARS_PERIOD
from cryptopay import parse_invoice
from db import extend_subscription
from payments import buy

if TYPE_CHECKING:
    from db import ApplyResult

_ids = itertools.count(1)  # message, callback and update ids: unique within a test run
_MADE_UP = object()


# --- Telegram: people and updates ---

def person(user_id: int = 501, lang: str | None = "en", first_name: str = "Member",
           username: str | None | object = _MADE_UP) -> dict:
    """A Telegram user: @m<id> unless a username (or None: an account without one) is given;
    lang None for a client that sends no language_code."""
    user = {"id": user_id, "is_bot": False, "first_name": first_name}
    username = f"m{user_id}" if username is _MADE_UP else username
    if username is not None:
        user["username"] = username
    if lang is not None:
        user["language_code"] = lang
    return user


def message(text: str | None, user_id: int = 501, lang: str | None = "en", *, sender: dict | None = None,
            chat: dict | None = None, **fields) -> dict:
    """A message from `sender` (person(user_id, lang) unless given), in their private chat unless
    `chat` is given. A text starting with "/" carries its bot_command entity, as Telegram's do;
    `fields` are added to the message as they are (migrate_to_chat_id=..., entities=...)."""
    sender = sender or person(user_id, lang)
    body = {"message_id": next(_ids), "date": START, "chat": chat or {"id": sender["id"], "type": "private"},
            "from": sender}
    if text is not None:
        body["text"] = text
        if text.startswith("/"):
            body["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    body.update(fields)
    return {"message": body}


def callback_query(data: str, user_id: int = 501, lang: str | None = "en", *, sender: dict | None = None,
                   message: bool = True) -> dict:
    """A press of an inline button carrying `data`, under a message in the member's private chat;
    message=False: with no message, as Telegram sends one from an inline-mode message or from a
    message the bot can no longer access."""
    sender = sender or person(user_id, lang)
    query = {"id": f"cb{next(_ids)}", "from": sender, "chat_instance": "ci", "data": data}
    if message:
        query["message"] = {"message_id": next(_ids), "date": START,
                            "chat": {"id": sender["id"], "type": "private"}, "text": "x"}
    return {"callback_query": query}


def join_request(user_id: int = 501, chat_id: int = CLUB_CHAT, lang: str | None = "en", *,
                 sender: dict | None = None) -> dict:
    """A request to join `chat_id` (a club chat unless told), through a link that asks to join."""
    sender = sender or person(user_id, lang)
    return {"chat_join_request": {"chat": {"id": chat_id, "type": "supergroup", "title": "Club"}, "from": sender,
                                  "user_chat_id": sender["id"], "date": START}}


def group_upgraded(chat_id: int, to_chat_id: int, title: str = "Club", user_id: int = 801) -> dict:
    """The service message a group sends when Telegram upgrades it to a supergroup."""
    return message(None, sender=person(user_id, None, "Owner", None),
                   chat={"id": chat_id, "type": "group", "title": title}, migrate_to_chat_id=to_chat_id)


def bot_status(chat_id: int = CLUB_CHAT, title: str = "Club", chat_type: str = "supergroup",
               status: str = "administrator", by: int = ADMIN, **rights: bool) -> dict:
    """The bot's own status changed in a chat (my_chat_member), as Telegram reports it now: made an
    administrator there with every right it needs unless `rights` says otherwise
    (can_restrict_members=False, ...), or another `status` ("member", "left")."""
    new = {**chat_member(777, status), **rights}  # 777: the fake bot's own id
    return {"my_chat_member": {
        "chat": {"id": chat_id, "type": chat_type, "title": title}, "from": person(by, "en", "Owner"),
        "date": int(time.time()), "old_chat_member": chat_member(777, "left"), "new_chat_member": new}}


# --- Telegram: updates handed to the handlers in this process ---

def feed(bot, *updates: dict) -> None:
    """Hand updates to the bot's handlers at once, in order, as TeleBot's polling would."""
    bot.process_new_updates([types.Update.de_json({"update_id": next(_ids), **update}) for update in updates])


def command(bot, text: str, user_id: int = 501, lang: str | None = "en") -> None:
    """The member (or admin) `user_id` sends `text` in their private chat."""
    feed(bot, message(text, user_id, lang))


def press(bot, data: str, user_id: int = 501, lang: str | None = "en") -> None:
    """The member presses the inline button carrying `data`."""
    feed(bot, callback_query(data, user_id, lang))


def ask_to_join(bot, user_id: int = 501, chat_id: int = CLUB_CHAT, lang: str | None = "en") -> None:
    """The member asks to join `chat_id`."""
    feed(bot, join_request(user_id, chat_id, lang))


def last_text(telegram, chat_id: int = 501) -> str:
    """The text of the last message the bot sent to `chat_id`."""
    return telegram.messages_to(chat_id)[-1]["text"]


def buttons(sent: dict) -> list[dict]:
    """The inline buttons of a message the bot sent (the params of its sendMessage), row by row."""
    return [button for row in json.loads(sent["reply_markup"])["inline_keyboard"] for button in row]


# --- Crypto Pay: webhook bodies ---

def crypto_pay_update(update_type: str, payload: dict, update_id: int = 1) -> bytes:
    """The body of a webhook CryptoBot sends."""
    return json.dumps({"update_id": update_id, "update_type": update_type,
                       "request_date": "2026-01-01T00:05:00.000Z", "payload": payload}).encode()


def paid_update(invoice: dict, update_id: int = 1) -> bytes:
    """The body of the invoice_paid webhook for `invoice` (as the fake Crypto Pay returns it)."""
    return crypto_pay_update("invoice_paid", invoice, update_id)


# --- members who bought, paid, or have time ---

def pending_invoice(app, user_id: int = 501, plan: str = "month", lang: str = "en") -> dict:
    """The member (@m<id>, seen now) buys `plan`: the pending invoice row, created at the fake Crypto Pay."""
    app.db.upsert_member(user_id, f"m{user_id}", "Member", lang, app.now())
    return buy(app, user_id, app.config.plan(plan), plan).invoice


def paid_invoice(app, cryptopay, user_id: int = 501, plan: str = "month", lang: str = "en", **paid_as) -> dict:
    """...and pays it at the fake Crypto Pay (`paid_as`: amount= or asset= other than asked): the paid
    invoice as Crypto Pay returns it, for a webhook body, the poller or the check button. Nothing applied."""
    return cryptopay.pay(pending_invoice(app, user_id, plan, lang)["invoice_id"], **paid_as)


def paid(app, cryptopay, user_id: int = 501, plan: str = "month", lang: str = "en", **paid_as) -> ApplyResult:
    """...and its webhook is applied, as the webhook server applies it: the result."""
    return apply(app, parse_invoice(paid_invoice(app, cryptopay, user_id, plan, lang, **paid_as)))


def apply(app, invoice, cause: str = "webhook") -> ApplyResult:
    """A paid invoice applied as the webhook server (or poller, button: `cause`) applies it."""
    return app.db.apply_invoice(invoice, cause, app.now(), app.config.admin_ids, app.config.referral_bonus)


def member_with_time(app, user_id: int = 501, days: int = 30, lang: str = "en") -> int:
    """A member (@m<id>) given `days` of membership at the current time, with no invoice and no
    message; their new expiry."""
    app.db.upsert_member(user_id, f"m{user_id}", "Member", lang, app.now())
    with app.db.transaction() as tx:
        return extend_subscription(tx, user_id, days * 86400, app.now())


def audit_rows(database, user_id: int | None = None) -> list:
    """The audit log in order, all of it or one member's."""
    if user_id is None:
        return database.connect().execute("SELECT * FROM audit ORDER BY id").fetchall()
    return database.connect().execute("SELECT * FROM audit WHERE user_id = ? ORDER BY id", (user_id,)).fetchall()


def gift_links(app, plan: str = "month", count: int = 1) -> list[tuple[str, str]]:
    """`count` gift links for `plan`, made and stored as `gift create` makes them: (token, short id) each."""
    made_for, made = gifts.make(app.config, plan, count)
    gifts.store(app.db, made_for, made, app.now(), "test")
    return made


# --- Telegram Stars ---

def stars_invoice(app, user_id: int = 501, plan: str = "stars"):
    """The member's pending invoice for a Stars plan."""
    [row] = [r for r in app.db.member_invoices(user_id) if r["plan_id"] == plan and r["status"] == "pending"]
    return row


def stars_paid(bot, telegram, app, user_id: int = 501, plan: str = "stars", amount: int | None = None) -> dict:
    """The member buys a Stars plan, Telegram asks pre-checkout (answered yes), and the payment
    arrives as a successful_payment message: the payment's JSON."""
    press(bot, f"plan:{plan}", user_id=user_id)
    row = stars_invoice(app, user_id, plan)
    feed(bot, {"pre_checkout_query": pre_checkout_query(user_id, row["payment_uuid"], int(row["amount"]))})
    assert telegram.pre_checkout_answers[-1]["ok"] in (True, "true", "True")
    period = STARS_PERIOD if app.config.plan(plan).renews else None
    payment = telegram.star_payment(user_id, row["payment_uuid"], amount or int(row["amount"]),
                                    subscription_period=period)
    feed(bot, {"message": successful_payment_message(user_id, payment)})
    return payment
