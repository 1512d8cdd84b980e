"""What each kind of outbox message says, one plain function per kinds.Kind (outbox.KINDS
holds the table): `def kind(ctx, chat_id, payload)`, where chat_id is the recipient.
What lets members in and out of the chats is in access.py."""
from __future__ import annotations

import logging
import time
from decimal import Decimal
from typing import TYPE_CHECKING

import texts
from access import let_in, lift_our_bans
from tg import classify, learn_bot
from views import chat_name, deep_link, member_language, plan_title, plans_keyboard

if TYPE_CHECKING:
    from outbox import Context

log = logging.getLogger("clubbot.messages")

BROADCAST_EDIT_EVERY = 3.0  # seconds between edits of a broadcast's progress message


# --- to members ---

def _time_left(ctx: Context, user_id: int, kind: str) -> int | None:
    """The member's expiry if they have time now; None (and a log line) if not.

    Asked at delivery, not when the row was queued: a row waiting for a retry must
    not let in someone who was revoked or expired meanwhile.
    """
    expires_at = ctx.db.expires_at(user_id)
    if expires_at is None or expires_at <= ctx.app.now():
        log.info("%s for member %s dropped: no time left now", kind, user_id)
        return None
    return expires_at


def activated(ctx: Context, user_id: int, payload: dict) -> None:
    expires_at = _time_left(ctx, user_id, "activation message")
    if expires_at is None:
        return
    lang = member_language(ctx.app, user_id)
    header = texts.t(lang, "activated", date=texts.format_date(expires_at, lang),
                     days_left=texts.days_left(expires_at, ctx.app.now(), lang))
    _send_way_in(ctx, user_id, lang, header)


def granted(ctx: Context, user_id: int, payload: dict) -> None:
    expires_at = _time_left(ctx, user_id, "grant message")
    if expires_at is None:
        return  # revoked again meanwhile
    lang = member_language(ctx.app, user_id)
    now = ctx.app.now()
    # a gift link's time, a referral's bonus, or an admin's
    key = "gift_granted" if payload.get("gift") else "referral_granted" if payload.get("referral") else "granted"
    header = texts.t(lang, key, duration=texts.duration_text(payload["duration"], lang),
                     date=texts.format_date(expires_at, lang), days_left=texts.days_left(expires_at, now, lang))
    _send_way_in(ctx, user_id, lang, header)


def gift_bought(ctx: Context, user_id: int, payload: dict) -> None:
    """The link of a plan the member bought as a gift, to pass on (the database forgets it once sent)."""
    if ctx.app.bot_username is None:
        learn_bot(ctx.app)  # a link without the bot's name would be lost with the token: retried until known
    lang = member_language(ctx.app, user_id)
    plan = ctx.app.config.plan(payload["plan"])
    title = plan_title(plan, lang) if plan else texts.duration_text(payload["duration"], lang)
    ctx.send(user_id, texts.t(lang, "gift_bought", title=title,
                              duration=texts.duration_text(payload["duration"], lang),
                              link=deep_link(ctx.app.bot_username, "g", payload["token"])))


def gift_redeemed(ctx: Context, user_id: int, payload: dict) -> None:
    """To a gift's buyer: it was taken (not by whom: a link passed on further, or leaked, must not
    tell a stranger's name)."""
    lang = member_language(ctx.app, user_id)
    ctx.send(user_id, texts.t(lang, "gift_taken", gift=payload["gift"]))


def refunded(ctx: Context, user_id: int, payload: dict) -> None:
    """A payment's money went back, and the time it bought with it."""
    lang = member_language(ctx.app, user_id)
    price = texts.price(Decimal(payload["amount"]), payload["asset"])
    expires_at = ctx.db.expires_at(user_id)
    now = ctx.app.now()
    if payload.get("gift"):
        text = texts.t(lang, "refunded_gift", price=price)
    elif expires_at and expires_at > now:
        text = texts.t(lang, "refunded", price=price, date=texts.format_date(expires_at, lang),
                       days_left=texts.days_left(expires_at, now, lang))
    else:
        text = texts.t(lang, "refunded_ended", price=price)
    ctx.send(user_id, text)


def way_in(ctx: Context, user_id: int, payload: dict) -> None:
    if _time_left(ctx, user_id, "way in") is not None:
        _send_way_in(ctx, user_id, member_language(ctx.app, user_id), None)


def _send_way_in(ctx: Context, user_id: int, lang: str, header: str | None) -> None:
    """The way in for a member with time left (the caller checked): our bans lifted first."""
    lift_our_bans(ctx, user_id)
    lines = [header] if header else []
    approved, keyboard = let_in(ctx, user_id, lang)
    if approved:
        lines.append(texts.t(lang, "way_in_approved", chats=", ".join(approved)))
    if keyboard:
        lines.append(texts.t(lang, "way_in_links"))
    ctx.send(user_id, "\n\n".join(lines), reply_markup=keyboard)


def join_plans(ctx: Context, chat_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, payload["user_id"])
    title = chat_name(ctx.app, payload["club_chat_id"], lang)
    ctx.send(chat_id, texts.t(lang, "join_request_plans", chat=title),
             reply_markup=plans_keyboard(ctx.app, lang, renew=False, user_id=payload["user_id"]))


def reminder(ctx: Context, user_id: int, payload: dict) -> None:
    now = ctx.app.now()
    expires_at = ctx.db.expires_at(user_id)
    if expires_at != payload["expires_at"] or expires_at <= now:
        log.info("reminder to member %s dropped: renewed or ended meanwhile", user_id)
        return
    if ctx.db.renewing_subscription(user_id, now) is not None:
        log.info("reminder to member %s dropped: their Stars subscription renews by itself", user_id)
        return
    lang = member_language(ctx.app, user_id)
    ctx.send(user_id, texts.t(lang, "reminder", date=texts.format_date(expires_at, lang),
                              days_left=texts.days_left(expires_at, now, lang)),
             reply_markup=plans_keyboard(ctx.app, lang, renew=True, user_id=user_id))


def expired_notice(ctx: Context, user_id: int, payload: dict) -> None:
    expires_at = ctx.db.expires_at(user_id)
    if expires_at is not None and expires_at > ctx.app.now():
        return  # back already
    lang = member_language(ctx.app, user_id)
    chats = ", ".join(chat_name(ctx.app, chat_id, lang) for chat_id in payload["chats"])
    ctx.send(user_id, texts.t(lang, "expired_notice", chats=chats),
             reply_markup=plans_keyboard(ctx.app, lang, renew=False, user_id=user_id))


def payment_mismatch(ctx: Context, user_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, user_id)
    ctx.send(user_id, texts.t(lang, "payment_mismatch", paid=payload["paid"], asked=payload["asked"]))


def text(ctx: Context, chat_id: int, payload: dict) -> None:
    ctx.send(chat_id, payload["text"])


def broadcast(ctx: Context, user_id: int, payload: dict) -> None:
    ctx.send(user_id, ctx.db.broadcast(payload["broadcast_id"])["text"])


# --- a broadcast's progress, shown to the admin who started it ---

def broadcast_started(ctx: Context, admin_chat: int, payload: dict) -> None:
    """The admin's progress message, then an edit if the members' rows got ahead of it."""
    broadcast_id = payload["broadcast_id"]
    row = ctx.db.broadcast(broadcast_id)
    if row is None or row["message_id"] is not None:
        return
    lang = member_language(ctx.app, admin_chat)
    shown = row["sent"] + row["failed"]
    progress = ctx.send(admin_chat, _broadcast_text(row, lang))
    ctx.broadcast_edits[broadcast_id] = (time.monotonic(), shown)
    # Set before the counts are read again; a member's row counts before it reads the id.
    # So whichever finishes last sees the other's write, and the last count is shown.
    ctx.db.set_broadcast_message(broadcast_id, progress.message_id)
    now = ctx.db.broadcast(broadcast_id)
    if now["sent"] + now["failed"] != shown:
        broadcast_progress(ctx, broadcast_id)


def broadcast_counted(ctx: Context, user_id: int, payload: dict) -> None:
    """A member's broadcast row is closed, sent or given up (outbox.ON_CLOSE): the progress moves."""
    broadcast_progress(ctx, payload["broadcast_id"])


def broadcast_progress(ctx: Context, broadcast_id: int) -> None:
    """Edit the admin's progress message: every few seconds, and at the end."""
    row = ctx.db.broadcast(broadcast_id)
    if row is None or row["message_id"] is None:
        return
    done = row["sent"] + row["failed"]
    finished = done >= row["total"]
    last_edit, last_done = ctx.broadcast_edits.get(broadcast_id, (0.0, 0))
    if not finished and (time.monotonic() - last_edit < BROADCAST_EDIT_EVERY or done == last_done):
        return
    ctx.broadcast_edits[broadcast_id] = (time.monotonic(), done)
    progress = _broadcast_text(row, member_language(ctx.app, row["admin_chat"]))
    try:
        ctx.call(ctx.bot.edit_message_text, progress, row["admin_chat"], row["message_id"])
    except Exception as exc:  # a progress message is not worth a retry
        log.info("broadcast %s: progress not shown: %s", broadcast_id, classify(exc).description)
    if finished:
        ctx.broadcast_edits.pop(broadcast_id, None)
        log.info("broadcast %s finished: %s sent, %s failed", broadcast_id, row["sent"], row["failed"])


def _broadcast_text(row, lang: str) -> str:
    finished = row["sent"] + row["failed"] >= row["total"]
    key = "admin_broadcast_done" if finished else "admin_broadcast_progress"
    return texts.t(lang, key, total=row["total"], sent=row["sent"], failed=row["failed"])


# --- to admins ---

def admin_mismatch(ctx: Context, admin_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, admin_id)
    ctx.send(admin_id, texts.t(
        lang, "admin_mismatch", user_id=payload["user_id"], invoice_id=payload["invoice_id"],
        plan=payload["plan"], asked=payload["asked"], paid=payload["paid"]))


def admin_rights(ctx: Context, admin_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, admin_id)
    chat = chat_name(ctx.app, payload["chat_id"], lang)
    if not payload["bad"]:
        message = texts.t(lang, "admin_rights_back", chat=chat)
    else:
        missing = ", ".join(texts.t(lang, key) for key in payload["missing"])
        message = texts.t(lang, "admin_rights_lost", chat=chat, missing=missing)
    ctx.send(admin_id, message)


def admin_chat_added(ctx: Context, admin_id: int, payload: dict) -> None:
    """The bot was added to a chat that is not a club chat (yet): its id, for CLUB_CHAT_IDS."""
    lang = member_language(ctx.app, admin_id)
    missing = payload["missing"]
    rights = (texts.t(lang, "chat_added_rights_missing", missing=", ".join(texts.t(lang, key) for key in missing))
              if missing else texts.t(lang, "chat_added_rights_ok"))
    ctx.send(admin_id, texts.t(lang, "chat_added", title=payload["title"] or "?", chat_id=payload["chat_id"],
                               rights=rights))


def admin_token(ctx: Context, admin_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, admin_id)
    if payload["bad"]:
        ctx.send(admin_id, texts.t(lang, "admin_alert_token", error=payload.get("error", "")))
    else:
        ctx.send(admin_id, texts.t(lang, "admin_alert_token_back"))


def admin_webhook(ctx: Context, admin_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, admin_id)
    config = ctx.app.config
    url = config.public_webhook_url or f"https://your-domain.com{config.webhook_path}"
    ctx.send(admin_id, texts.t(lang, "admin_alert_webhook", invoice_id=payload.get("invoice_id"), url=url))


def admin_webhook_unusable(ctx: Context, admin_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, admin_id)
    ctx.send(admin_id, texts.t(lang, "admin_alert_webhook_unusable", error=payload.get("error"),
                               record_id=payload.get("record_id")))


def admin_invoice_unreadable(ctx: Context, admin_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, admin_id)
    ctx.send(admin_id, texts.t(lang, "admin_alert_invoice_unreadable", invoice_id=payload.get("invoice_id"),
                               user_id=payload.get("user_id"), error=payload.get("error")))


def admin_migrated(ctx: Context, admin_id: int, payload: dict) -> None:
    lang = member_language(ctx.app, admin_id)
    ctx.send(admin_id, texts.t(lang, "admin_chat_migrated", chat=chat_name(ctx.app, payload["new"], lang),
                               old=payload["old"], new=payload["new"]))
