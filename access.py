"""The members' way in and out of the club chats: their own invite links and join requests
approved, removal with its ban recorded first and always lifted after, the chats' admins
(never removed), and the bot's rights there. The outbox's kinds of work call these
(outbox.KINDS); each takes the outbox's Context, the rights check the App alone."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from telebot import types

import texts
from kinds import Kind
from runtime import App
from tg import RetryLater, budgeted_call, classify, learn_bot, learn_chat
from views import chat_name

if TYPE_CHECKING:
    from outbox import Context

log = logging.getLogger("clubbot.access")

ADMINS_TTL = 600  # seconds a club chat's admin list is trusted


class RemovalBlocked(RetryLater):
    """The bot cannot remove members from a club chat now (rights, or the chat is gone)."""


# --- the way in ---

def let_in(ctx: Context, user_id: int, lang: str) -> tuple[list[str], types.InlineKeyboardMarkup | None]:
    """Approve the member's waiting join requests; personal links for the other chats.
    Returns the titles of the chats approved, and the links as buttons (None: no link)."""
    now = ctx.app.now()
    waiting = set(ctx.db.waiting_join_chats(user_id))
    approved: list[str] = []
    keyboard = types.InlineKeyboardMarkup()
    links = 0
    for chat_id in ctx.app.club_chats():
        title = chat_name(ctx.app, chat_id, lang)
        if chat_id in waiting and approve_request(ctx, chat_id, user_id):
            approved.append(title)
            continue  # a request that is gone (withdrawn, or decided) gets a link instead
        link = invite_link(ctx, user_id, chat_id, now)
        if link is not None:
            keyboard.add(types.InlineKeyboardButton(texts.t(lang, "join_button", chat=title), url=link))
            links += 1
    return approved, keyboard if links else None


def invite_link(ctx: Context, user_id: int, chat_id: int, now: int) -> str | None:
    """The member's own link to the chat, which asks to join (made once, then kept);
    None where the bot may not make one."""
    link = ctx.db.invite_link(user_id, chat_id)
    if link is not None:
        return link
    try:
        invite = ctx.call(ctx.bot.create_chat_invite_link, chat_id,
                          name=f"member {user_id}"[:32], creates_join_request=True)
    except Exception as exc:
        failure = classify(exc)
        if failure.kind not in ("blocked", "rejected"):
            raise
        # The bot lacks its rights there (admins hear it from the rights check); the
        # member still gets "active until" and the other chats, and /link later.
        log.error("no invite link for member %s in chat %s: %s", user_id, chat_id, failure.description)
        return None
    ctx.db.save_invite_link(user_id, chat_id, invite.invite_link, now)
    return invite.invite_link


def approve(ctx: Context, user_id: int, payload: dict) -> None:
    """Kind.APPROVE: a join request of a member who has time left."""
    chat_id = payload["chat_id"]
    expires_at = ctx.db.expires_at(user_id)
    if not expires_at or expires_at <= ctx.app.now():
        log.info("join request of member %s to chat %s left waiting: no time left", user_id, chat_id)
        return
    approve_request(ctx, chat_id, user_id)


def approve_request(ctx: Context, chat_id: int, user_id: int) -> bool:
    """Approve a waiting join request and record it; False if the request is gone."""
    now = ctx.app.now()
    try:
        ctx.call(ctx.bot.approve_chat_join_request, chat_id, user_id)
    except Exception as exc:
        if classify(exc).kind != "rejected":
            raise
        ctx.db.decide_join_request(chat_id, user_id, "gone", now)
        log.info("join request of member %s to chat %s was gone before approval", user_id, chat_id)
        return False
    ctx.db.decide_join_request(chat_id, user_id, "approved", now)
    ctx.db.audit(now, user_id, "join_approved", "bot", detail={"chat_id": chat_id})
    log.info("join request of member %s to chat %s approved", user_id, chat_id)
    return True


def decline(ctx: Context, user_id: int, payload: dict) -> None:
    """Kind.DECLINE: a join request that waited a day unpaid."""
    try:
        ctx.call(ctx.bot.decline_chat_join_request, payload["chat_id"], user_id)
    except Exception as exc:
        if classify(exc).kind != "rejected":
            raise
        log.info("join request of member %s to chat %s was gone before decline", user_id, payload["chat_id"])
        return
    log.info("join request of member %s to chat %s declined: not paid within a day", user_id,
             payload["chat_id"])


# --- the way out ---

def expire(ctx: Context, user_id: int, payload: dict) -> None:
    """Kind.EXPIRE: remove the member from every club chat (the ban lifted again); the notice is
    queued after, in the transaction that closes this row (ctx.row_id)."""
    if not _removal_due(ctx, user_id, payload):
        # An earlier try may have banned and then failed before the unban: lift it now.
        lift_our_bans(ctx, user_id)
        log.info("member %s: removal not due (renewed, revoked since, or the clock was ahead)", user_id)
        return
    removed = []
    for chat_id in ctx.app.club_chats():
        if user_id in ctx.app.config.admin_ids or user_id in chat_admins(ctx, chat_id):
            log.info("member %s is an admin of chat %s; not removed", user_id, chat_id)
            continue
        if remove(ctx, chat_id, user_id):
            removed.append(chat_id)
    ctx.db.removal_done(ctx.row_id, user_id, payload["expires_at"], removed, ctx.app.now())
    ctx.app.wake_sender()
    log.info("subscription removed: member %s from %d chat(s)", user_id, len(removed))


def _removal_due(ctx: Context, user_id: int, payload: dict) -> bool:
    """Is the expiry this removal was queued for still the member's, and past (plus grace)?
    A revoke's removal is due while the member is still revoked, whatever the clock says, and a
    refund's while the expiry it set stands."""
    row = ctx.db.subscription(user_id)
    if row is None:
        return False
    if payload.get("revoked"):
        return row["revoked_at"] is not None
    if row["revoked_at"] is not None or row["expires_at"] != payload["expires_at"]:
        return False  # renewed, or revoked (whose removal is the revoke's own)
    if payload.get("refund"):
        return True  # a refund took all the time back: out now, no grace period
    if row["expires_at"] + ctx.app.config.grace_period <= ctx.app.now():
        return True
    ctx.db.expiry_not_handled(user_id, row["expires_at"])  # queued while the clock ran ahead
    return False


def remove(ctx: Context, chat_id: int, user_id: int) -> bool:
    """Ban and unban: out of the chat, free to come back. False if they are an admin there,
    or banned by the chat's moderators (their ban is theirs: left as it is).

    The ban is recorded before it is asked for and forgotten after its unban, so a ban
    that was made is always followed by its unban, after a failure or a kill between
    the two calls too (a member who renews meanwhile gets the unban alone).
    """
    fresh = chat_id not in ctx.db.our_bans(user_id)
    try:
        if fresh:
            status = ctx.call(ctx.bot.get_chat_member, chat_id, user_id).status
            if status == "kicked":
                log.info("member %s is banned from chat %s by its moderators; left as it is", user_id, chat_id)
                return False
            if status in ("administrator", "creator"):
                log.info("member %s is an admin of chat %s; not removed", user_id, chat_id)
                return False
            if status == "left":
                return True  # not in the chat: nothing to undo
            ctx.db.ban_started(chat_id, user_id, ctx.app.now())
        # Asked again on a retry: a ban that failed (429, 502, timeout) may not have been made.
        ctx.call(ctx.bot.ban_chat_member, chat_id, user_id)
    except Exception as exc:
        if fresh and classify(exc).kind in ("blocked", "rejected"):
            ctx.db.ban_lifted(chat_id, user_id)  # refused: Telegram made no ban
        return removal_refused(ctx, chat_id, user_id, exc)
    try:
        unban(ctx, chat_id, user_id)
    except Exception as exc:
        return removal_refused(ctx, chat_id, user_id, exc)
    return True


def removal_refused(ctx: Context, chat_id: int, user_id: int, exc: Exception) -> bool:
    """What a refused ban or unban means: retry later (raises), an admin (False), or done."""
    failure = classify(exc)
    if failure.kind == "blocked" or failure.reason == "no_rights":
        raise RemovalBlocked(f"chat {chat_id}: {failure.description}") from None
    if failure.reason == "admin":
        log.info("member %s is an admin of chat %s; not removed", user_id, chat_id)
        return False
    if failure.kind == "rejected":
        # No ban was made, or Telegram cannot lift it (a basic group): nothing left to lift.
        log.warning("removing member %s from chat %s: %s; taken as done", user_id, chat_id, failure.description)
        ctx.db.ban_lifted(chat_id, user_id)
        return True
    raise exc


def unban(ctx: Context, chat_id: int, user_id: int) -> None:
    """Lift a ban ClubBot made (only_if_banned: a member who is not banned is left alone)."""
    ctx.call(ctx.bot.unban_chat_member, chat_id, user_id, only_if_banned=True)
    ctx.db.ban_lifted(chat_id, user_id)


def lift_our_bans(ctx: Context, user_id: int) -> None:
    """Lift every ban of this member that ClubBot made and has not lifted yet. Raises (the row
    is retried) while Telegram fails for a while; where the bot cannot lift it now (rights),
    a row of its own retries it until it is done, and the caller goes on (the way in to
    the other chats, the "active until" message)."""
    for chat_id in ctx.db.our_bans(user_id):
        try:
            lift_ban(ctx, user_id, {"chat_id": chat_id})
        except RemovalBlocked as blocked:
            log.warning("member %s: a ban in chat %s cannot be lifted now (%s); retried until it is",
                        user_id, chat_id, blocked)
            ctx.db.enqueue(Kind.LIFT_BAN, user_id, {"chat_id": chat_id}, ctx.app.now(),
                           pending_key=f"lift_ban:{chat_id}:{user_id}")
            continue
        log.info("member %s: a ban left by an interrupted removal from chat %s is lifted", user_id, chat_id)


def lift_ban(ctx: Context, user_id: int, payload: dict) -> None:
    """Kind.LIFT_BAN: the unban that follows a ban ClubBot made; retried until done (RemovalBlocked)."""
    chat_id = payload["chat_id"]
    if chat_id not in ctx.db.our_bans(user_id):
        return  # lifted meanwhile
    if chat_id not in ctx.app.club_chats():
        ctx.db.ban_lifted(chat_id, user_id)
        log.warning("member %s: a ban in chat %s, no longer a club chat, is left to its admins", user_id, chat_id)
        return
    try:
        unban(ctx, chat_id, user_id)
    except Exception as exc:
        removal_refused(ctx, chat_id, user_id, exc)


def chat_admins(ctx: Context, chat_id: int) -> frozenset[int]:
    """The chat's administrators and owner, who are never removed (kept ADMINS_TTL)."""
    cached = ctx.admins.get(chat_id)
    if cached and time.monotonic() - cached[0] < ADMINS_TTL:
        return cached[1]
    try:
        members = ctx.call(ctx.bot.get_chat_administrators, chat_id)
    except Exception as exc:
        failure = classify(exc)
        if failure.kind in ("blocked", "rejected"):
            raise RemovalBlocked(f"chat {chat_id}: {failure.description}") from None
        raise
    admins = frozenset(member.user.id for member in members)
    ctx.admins[chat_id] = (time.monotonic(), admins)
    return admins


# --- the bot's rights ---

def check_rights(app: App, now: int) -> None:
    """Can the bot still invite and remove members in every club chat? Alert admins on a change."""
    try:
        bot_id = learn_bot(app)
    except Exception as exc:
        log.warning("rights check skipped: getMe failed: %s", classify(exc).description)
        return
    for chat_id in app.club_chats():
        missing = _rights_missing(app, chat_id, bot_id)
        if missing is not None:
            report_rights(app, chat_id, missing, now)


def report_rights(app: App, chat_id: int, missing: list[str], now: int) -> None:
    """What the bot lacks in a club chat, as found now: admins alerted once when rights go, once
    when they come back (and the removals missed meanwhile are retried)."""
    if app.db.alert_state(f"rights:{chat_id}", bool(missing), now, app.config.admin_ids, Kind.ADMIN_RIGHTS,
                          {"chat_id": chat_id, "missing": missing}):
        if missing:
            log.error("the bot lost its rights in chat %s: %s", chat_id, ", ".join(missing))
        else:
            log.info("the bot's rights in chat %s are back; missed removals follow", chat_id)
            app.db.retry_removals_now(now)
        app.wake_sender()


def _rights_missing(app: App, chat_id: int, bot_id: int) -> list[str] | None:
    """What the bot lacks in the chat (missing_rights); None when Telegram did not say (logged)."""
    try:
        member = budgeted_call(app, app.bot.get_chat_member, chat_id, bot_id)
        if chat_id not in app.chat_types:
            learn_chat(app, chat_id)
    except Exception as exc:
        failure = classify(exc)
        if failure.kind not in ("blocked", "rejected"):
            log.warning("rights check of chat %s failed: %s", chat_id, failure.description)
            return None
        return ["right_admin"]
    return missing_rights(member, app.chat_types.get(chat_id))


def missing_rights(member, chat_type: str | None) -> list[str]:
    """What the bot lacks, as text keys: it must be an admin who can invite and ban."""
    if member.status == "creator":
        return []
    if member.status != "administrator":
        return ["right_admin"]
    missing = []
    if not member.can_invite_users:
        missing.append("right_invite")
    # Channel admins remove subscribers without a separate right.
    if chat_type != "channel" and member.can_restrict_members is False:
        missing.append("right_ban")
    return missing
