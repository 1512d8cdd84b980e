"""The background loops: the outbox sender, the payment poller, the sweeper (updates.py: Telegram's updates).

Each loop has a stop event, bounded waits, backoff, one log line per failure,
and survives a bad row.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from telebot import types

import texts
from cryptopay import CryptoPayError
from db import Database
from kinds import Kind
from payments import WebhookWatch, poll_once
from runtime import App
from tg import classify, migrated_to
from views import member_language, plans_keyboard

log = logging.getLogger("clubbot.workers")

# The sender gives a message up when it has failed for this long.
GIVE_UP_AFTER = 3 * 86400
MAX_BACKOFF = 600
MAX_RETRY_AFTER = 3600  # a longer 429 wait from Telegram is taken as this
LONGEST_WAIT = max(MAX_BACKOFF, MAX_RETRY_AFTER)  # a row due later than this was queued by a clock ahead


class Stopping(Exception):
    """The process is stopping; the row stays queued."""


class RemovalBlocked(Exception):
    """The bot cannot remove members from a club chat now (rights, or the chat is gone)."""


# Work that is retried until it is done, however long that takes.
NEVER_GIVE_UP = frozenset({Kind.EXPIRE, Kind.LIFT_BAN})
JOIN_REQUEST_WAIT = 86400  # a join request waits this long for a payment, then is declined
ADMINS_TTL = 600  # seconds a club chat's admin list is trusted
BROADCAST_EDIT_EVERY = 3.0  # seconds between edits of a broadcast's progress message
UPDATES_KEPT = 7 * 86400  # handled Telegram updates are remembered this long (Telegram keeps them a day)


class Sender:
    """Does the outbox's work through the Bot API, at least once per row, in order of priority."""

    def __init__(self, app: App, lanes: int = 1):
        self.app = app
        self.db: Database = app.db
        self.bot = app.bot
        self.lanes = lanes
        self.kinds: dict[Kind, Callable] = {
            Kind.ACTIVATED: self._activated,
            Kind.WAY_IN: self._way_in_message,
            Kind.PAYMENT_MISMATCH: self._payment_mismatch,
            Kind.ADMIN_MISMATCH: self._admin_mismatch,
            Kind.APPROVE: self._approve,
            Kind.JOIN_PLANS: self._join_plans,
            Kind.TEXT: self._text,
            Kind.REMINDER: self._reminder,
            Kind.EXPIRE: self._expire,
            Kind.EXPIRED_NOTICE: self._expired_notice,
            Kind.DECLINE: self._decline,
            Kind.ADMIN_RIGHTS: self._admin_rights,
            Kind.GRANTED: self._granted,
            Kind.BROADCAST: self._broadcast,
            Kind.BROADCAST_STARTED: self._broadcast_started,
            Kind.ADMIN_TOKEN: self._admin_token,
            Kind.ADMIN_WEBHOOK: self._admin_webhook,
            Kind.ADMIN_WEBHOOK_UNUSABLE: self._admin_webhook_unusable,
            Kind.ADMIN_INVOICE_UNREADABLE: self._admin_invoice_unreadable,
            Kind.ADMIN_MIGRATED: self._admin_migrated,
            Kind.LIFT_BAN: self._lift_ban,
        }
        self._broadcast_edits: dict[int, tuple[float, int]] = {}
        self._admins: dict[int, tuple[float, frozenset[int]]] = {}

    # --- the loop ---

    def run(self) -> None:
        log.info("sender started")
        while not self.app.stop.is_set():
            self.app.heartbeat("sender")
            try:
                done = self.run_once()
            except Exception:
                log.exception("sender: unexpected failure")
                done = 0
            if not done:
                self.app.outbox_ready.wait(1.0)
                self.app.outbox_ready.clear()
        log.info("sender stopped")

    def run_once(self, limit: int = 200) -> int:
        """Deliver what is due now; return how many rows were tried.

        With several lanes, rows are split by recipient, so one chat's messages keep
        their order while Bot API round trips to different chats overlap.
        """
        rows = self.db.due_messages(self.app.now(), limit)
        if self.lanes == 1 or len(rows) < 2:
            self._deliver_all(rows)
            return len(rows)
        lanes: dict[int, list[sqlite3.Row]] = {}
        for row in rows:
            lanes.setdefault(row["chat_id"] % self.lanes, []).append(row)
        threads = [threading.Thread(target=self._deliver_all, args=(lane,), name="sender-lane", daemon=True)
                   for lane in lanes.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return len(rows)

    def _deliver_all(self, rows: list[sqlite3.Row]) -> None:
        for row in rows:
            if self.app.stop.is_set():
                break
            try:
                self.deliver(row)
            except Exception:  # one bad row must not stop the rest
                log.exception("outbox %s: delivery failed", row["id"])

    def deliver(self, row: sqlite3.Row) -> None:
        now = self.app.now()
        handler = self.kinds.get(row["kind"])
        if handler is None:
            self.db.message_done(row["id"], "failed", now, f"unknown kind {row['kind']}")
            log.error("outbox %s: unknown kind %s", row["id"], row["kind"])
            return
        try:
            if handler == self._expire:
                handler(row["chat_id"], json.loads(row["payload"]), row["id"])
            else:
                handler(row["chat_id"], json.loads(row["payload"]))
        except Stopping:
            return
        except Exception as exc:
            self._failed(row, exc)
            return
        self.db.message_done(row["id"], "sent", self.app.now())
        log.info("sent %s to %s (outbox %s)", row["kind"], row["chat_id"], row["id"])
        if row["kind"] == Kind.BROADCAST:
            self._broadcast_progress(json.loads(row["payload"])["broadcast_id"])

    def _failed(self, row: sqlite3.Row, exc: Exception) -> None:
        failure = classify(exc)
        now = self.app.now()
        where = f"outbox {row['id']} ({row['kind']} to {row['chat_id']})"
        if isinstance(exc, RemovalBlocked):
            self._retry(row, now, str(exc), where)
            return
        if failure.kind == "flood":
            wait = min(failure.retry_after, MAX_RETRY_AFTER)
            self.app.limiter.pause(wait)
            self.db.message_retry(row["id"], now + wait, failure.description, count_attempt=False)
            log.warning("%s: Telegram asks to wait %ss", where, failure.retry_after)
            return
        if failure.kind == "blocked":
            log.warning("%s: given up, the member blocked the bot or left (%s)", where, failure.description)
        elif failure.kind == "rejected":
            log.error("%s: Telegram refused it: %s", where, failure.description)
        elif now - row["created_at"] > GIVE_UP_AFTER and row["kind"] not in NEVER_GIVE_UP:
            log.error("%s: given up after %d attempts: %s", where, row["attempts"] + 1, failure.description)
        else:
            self._retry(row, now, failure.description, where)
            return
        self.db.message_done(row["id"], "failed", now, failure.description)
        if row["kind"] == Kind.BROADCAST:
            self._broadcast_progress(json.loads(row["payload"])["broadcast_id"])

    def _retry(self, row: sqlite3.Row, now: int, description: str, where: str) -> None:
        delay = min(MAX_BACKOFF, 2 ** min(row["attempts"], 10))
        self.db.message_retry(row["id"], now + delay, description)
        log.warning("%s: failed (%s), retrying in %ss", where, description, delay)

    def call(self, method, *args, **kwargs):
        """One Bot API call through the shared rate budget (a chat's migration followed)."""
        return budgeted_call(self.app, method, *args, **kwargs)

    def send(self, chat_id: int, text: str, **kwargs):
        """sendMessage through the shared budget, at most one a second per chat."""
        if not self.app.limiter.acquire(self.app.stop, chat_id=chat_id):
            raise Stopping()
        return self.bot.send_message(chat_id, text, **kwargs)

    # --- the kinds of work ---

    def chat_title(self, chat_id: int, lang: str) -> str:
        title = self.app.chat_titles.get(chat_id)
        if title is None:
            try:
                title = self.call(self.bot.get_chat, chat_id).title or ""
            except Stopping:
                raise
            except Exception as exc:
                log.warning("getChat %s failed: %s", chat_id, classify(exc).description)
                title = ""
            if title:
                self.app.chat_titles[chat_id] = title
        return title or ("клуб" if lang == "ru" else "the club")

    def _way_in(self, user_id: int, lang: str) -> tuple[list[str], types.InlineKeyboardMarkup | None]:
        """Approve the member's waiting join requests; personal links for the other chats."""
        now = self.app.now()
        waiting = set(self.db.waiting_join_chats(user_id))
        approved: list[str] = []
        keyboard = types.InlineKeyboardMarkup()
        links = 0
        for chat_id in self.app.club_chats():
            title = self.chat_title(chat_id, lang)
            if chat_id in waiting and self._approve_request(chat_id, user_id):
                approved.append(title)
                continue  # a request that is gone (withdrawn, or decided) gets a link instead
            link = self.db.invite_link(user_id, chat_id)
            if link is None:
                try:
                    invite = self.call(self.bot.create_chat_invite_link, chat_id,
                                       name=f"member {user_id}"[:32], creates_join_request=True)
                except Stopping:
                    raise
                except Exception as exc:
                    failure = classify(exc)
                    if failure.kind not in ("blocked", "rejected"):
                        raise
                    # The bot lacks its rights there (admins hear it from the rights check); the
                    # member still gets "active until" and the other chats, and /link later.
                    log.error("no invite link for member %s in chat %s: %s", user_id, chat_id,
                              failure.description)
                    continue
                link = invite.invite_link
                self.db.save_invite_link(user_id, chat_id, link, now)
            keyboard.add(types.InlineKeyboardButton(texts.t(lang, "join_button", chat=title), url=link))
            links += 1
        return approved, keyboard if links else None

    def _time_left(self, user_id: int, kind: str) -> int | None:
        """The member's expiry if they have time now; None (and a log line) if not.

        Asked at delivery, not when the row was queued: a row waiting for a retry must
        not let in someone who was revoked or expired meanwhile.
        """
        expires_at = self.db.expires_at(user_id)
        if expires_at is None or expires_at <= self.app.now():
            log.info("%s for member %s dropped: no time left now", kind, user_id)
            return None
        return expires_at

    def _activated(self, user_id: int, payload: dict) -> None:
        expires_at = self._time_left(user_id, "activation message")
        if expires_at is None:
            return
        lang = member_language(self.app, user_id)
        header = texts.t(lang, "activated", date=texts.format_date(expires_at, lang),
                         days_left=texts.days_left(expires_at, self.app.now(), lang))
        self._send_way_in(user_id, lang, header)

    def _way_in_message(self, user_id: int, payload: dict) -> None:
        if self._time_left(user_id, "way in") is not None:
            self._send_way_in(user_id, member_language(self.app, user_id), None)

    def _send_way_in(self, user_id: int, lang: str, header: str | None) -> None:
        """The way in for a member with time left (the caller checked): our bans lifted first."""
        self._lift_our_bans(user_id)
        lines = [header] if header else []
        approved, keyboard = self._way_in(user_id, lang)
        if approved:
            lines.append(texts.t(lang, "way_in_approved", chats=", ".join(approved)))
        if keyboard:
            lines.append(texts.t(lang, "way_in_links"))
        self.send(user_id, "\n\n".join(lines), reply_markup=keyboard)

    def _payment_mismatch(self, user_id: int, payload: dict) -> None:
        lang = member_language(self.app, user_id)
        self.send(user_id,
                  texts.t(lang, "payment_mismatch", paid=payload["paid"], asked=payload["asked"]))

    def _admin_mismatch(self, admin_id: int, payload: dict) -> None:
        lang = member_language(self.app, admin_id)
        self.send(admin_id, texts.t(
            lang, "admin_mismatch", user_id=payload["user_id"], invoice_id=payload["invoice_id"],
            plan=payload["plan"], asked=payload["asked"], paid=payload["paid"]))

    def _approve(self, user_id: int, payload: dict) -> None:
        chat_id = payload["chat_id"]
        now = self.app.now()
        expires_at = self.db.expires_at(user_id)
        if not expires_at or expires_at <= now:
            log.info("join request of member %s to chat %s left waiting: no time left", user_id, chat_id)
            return
        self._approve_request(chat_id, user_id)

    def _approve_request(self, chat_id: int, user_id: int) -> bool:
        """Approve a waiting join request and record it; False if the request is gone."""
        now = self.app.now()
        try:
            self.call(self.bot.approve_chat_join_request, chat_id, user_id)
        except Exception as exc:
            if classify(exc).kind != "rejected":
                raise
            self.db.decide_join_request(chat_id, user_id, "gone", now)
            log.info("join request of member %s to chat %s was gone before approval", user_id, chat_id)
            return False
        self.db.decide_join_request(chat_id, user_id, "approved", now)
        self.db.audit(now, user_id, "join_approved", "bot", detail={"chat_id": chat_id})
        log.info("join request of member %s to chat %s approved", user_id, chat_id)
        return True

    def _join_plans(self, chat_id: int, payload: dict) -> None:
        lang = member_language(self.app, payload["user_id"])
        title = self.chat_title(payload["club_chat_id"], lang)
        self.send(chat_id, texts.t(lang, "join_request_plans", chat=title),
                  reply_markup=plans_keyboard(self.app, lang, renew=False))

    def _text(self, chat_id: int, payload: dict) -> None:
        self.send(chat_id, payload["text"])

    def _reminder(self, user_id: int, payload: dict) -> None:
        now = self.app.now()
        expires_at = self.db.expires_at(user_id)
        if expires_at != payload["expires_at"] or expires_at <= now:
            log.info("reminder to member %s dropped: renewed or ended meanwhile", user_id)
            return
        lang = member_language(self.app, user_id)
        self.send(user_id, texts.t(lang, "reminder", date=texts.format_date(expires_at, lang),
                                   days_left=texts.days_left(expires_at, now, lang)),
                  reply_markup=plans_keyboard(self.app, lang, renew=True))

    def _expire(self, user_id: int, payload: dict, message_id: int) -> None:
        """Remove the member from every club chat (the ban lifted again); the notice is queued after."""
        if not self._removal_due(user_id, payload):
            # An earlier try may have banned and then failed before the unban: lift it now.
            self._lift_our_bans(user_id)
            log.info("member %s: removal not due (renewed, revoked since, or the clock was ahead)", user_id)
            return
        removed = []
        for chat_id in self.app.club_chats():
            if user_id in self.app.config.admin_ids or user_id in self.chat_admins(chat_id):
                log.info("member %s is an admin of chat %s; not removed", user_id, chat_id)
                continue
            if self._remove(chat_id, user_id):
                removed.append(chat_id)
        self.db.removal_done(message_id, user_id, payload["expires_at"], removed, self.app.now())
        self.app.wake_sender()
        log.info("subscription removed: member %s from %d chat(s)", user_id, len(removed))

    def _removal_due(self, user_id: int, payload: dict) -> bool:
        """Is the expiry this removal was queued for still the member's, and past (plus grace)?
        A revoke's removal is due while the member is still revoked, whatever the clock says."""
        row = self.db.subscription(user_id)
        if row is None:
            return False
        if payload.get("revoked"):
            return row["revoked_at"] is not None
        if row["revoked_at"] is not None or row["expires_at"] != payload["expires_at"]:
            return False  # renewed, or revoked (whose removal is the revoke's own)
        if row["expires_at"] + self.app.config.grace_period <= self.app.now():
            return True
        self.db.expiry_not_handled(user_id, row["expires_at"])  # queued while the clock ran ahead
        return False

    def _expired_notice(self, user_id: int, payload: dict) -> None:
        expires_at = self.db.expires_at(user_id)
        if expires_at is not None and expires_at > self.app.now():
            return  # back already
        lang = member_language(self.app, user_id)
        chats = ", ".join(self.chat_title(chat_id, lang) for chat_id in payload["chats"])
        self.send(user_id, texts.t(lang, "expired_notice", chats=chats),
                  reply_markup=plans_keyboard(self.app, lang, renew=False))

    def _remove(self, chat_id: int, user_id: int) -> bool:
        """Ban and unban: out of the chat, free to come back. False if they are an admin there,
        or banned by the chat's moderators (their ban is theirs: left as it is).

        The ban is recorded before it is asked for and forgotten after its unban, so a ban
        that was made is always followed by its unban, after a failure or a kill between
        the two calls too (a member who renews meanwhile gets the unban alone).
        """
        fresh = chat_id not in self.db.our_bans(user_id)
        try:
            if fresh:
                status = self.call(self.bot.get_chat_member, chat_id, user_id).status
                if status == "kicked":
                    log.info("member %s is banned from chat %s by its moderators; left as it is", user_id, chat_id)
                    return False
                if status in ("administrator", "creator"):
                    log.info("member %s is an admin of chat %s; not removed", user_id, chat_id)
                    return False
                if status == "left":
                    return True  # not in the chat: nothing to undo
                self.db.ban_started(chat_id, user_id, self.app.now())
            # Asked again on a retry: a ban that failed (429, 502, timeout) may not have been made.
            self.call(self.bot.ban_chat_member, chat_id, user_id)
        except Stopping:
            raise
        except Exception as exc:
            failure = classify(exc)
            if fresh and failure.kind in ("blocked", "rejected"):
                self.db.ban_lifted(chat_id, user_id)  # refused: Telegram made no ban
            return self._removal_refused(chat_id, user_id, exc)
        try:
            self._unban(chat_id, user_id)
        except Stopping:
            raise
        except Exception as exc:
            return self._removal_refused(chat_id, user_id, exc)
        return True

    def _removal_refused(self, chat_id: int, user_id: int, exc: Exception) -> bool:
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
            self.db.ban_lifted(chat_id, user_id)
            return True
        raise exc

    def _unban(self, chat_id: int, user_id: int) -> None:
        """Lift a ban ClubBot made (only_if_banned: a member who is not banned is left alone)."""
        self.call(self.bot.unban_chat_member, chat_id, user_id, only_if_banned=True)
        self.db.ban_lifted(chat_id, user_id)

    def _lift_our_bans(self, user_id: int) -> None:
        """Lift every ban of this member that ClubBot made and has not lifted yet. Raises (the row
        is retried) while Telegram fails for a while; where the bot cannot lift it now (rights),
        a row of its own retries it until it is done, and the caller goes on (the way in to
        the other chats, the "active until" message)."""
        for chat_id in self.db.our_bans(user_id):
            try:
                self._lift_ban(user_id, {"chat_id": chat_id})
            except RemovalBlocked as blocked:
                log.warning("member %s: a ban in chat %s cannot be lifted now (%s); retried until it is",
                            user_id, chat_id, blocked)
                self.db.enqueue(Kind.LIFT_BAN, user_id, {"chat_id": chat_id}, self.app.now(),
                                pending_key=f"lift_ban:{chat_id}:{user_id}")
                continue
            log.info("member %s: a ban left by an interrupted removal from chat %s is lifted", user_id, chat_id)

    def _lift_ban(self, user_id: int, payload: dict) -> None:
        """The unban that follows a ban ClubBot made; retried until done (RemovalBlocked)."""
        chat_id = payload["chat_id"]
        if chat_id not in self.db.our_bans(user_id):
            return  # lifted meanwhile
        if chat_id not in self.app.club_chats():
            self.db.ban_lifted(chat_id, user_id)
            log.warning("member %s: a ban in chat %s, no longer a club chat, is left to its admins", user_id, chat_id)
            return
        try:
            self._unban(chat_id, user_id)
        except Stopping:
            raise
        except Exception as exc:
            self._removal_refused(chat_id, user_id, exc)

    def chat_admins(self, chat_id: int) -> frozenset[int]:
        """The chat's administrators and owner, who are never removed."""
        cached = self._admins.get(chat_id)
        if cached and time.monotonic() - cached[0] < ADMINS_TTL:
            return cached[1]
        try:
            members = self.call(self.bot.get_chat_administrators, chat_id)
        except Stopping:
            raise
        except Exception as exc:
            failure = classify(exc)
            if failure.kind in ("blocked", "rejected"):
                raise RemovalBlocked(f"chat {chat_id}: {failure.description}") from None
            raise
        admins = frozenset(member.user.id for member in members)
        self._admins[chat_id] = (time.monotonic(), admins)
        return admins

    def _decline(self, user_id: int, payload: dict) -> None:
        try:
            self.call(self.bot.decline_chat_join_request, payload["chat_id"], user_id)
        except Exception as exc:
            if classify(exc).kind != "rejected":
                raise
            log.info("join request of member %s to chat %s was gone before decline", user_id, payload["chat_id"])
            return
        log.info("join request of member %s to chat %s declined: not paid within a day", user_id,
                 payload["chat_id"])

    def _granted(self, user_id: int, payload: dict) -> None:
        expires_at = self._time_left(user_id, "grant message")
        if expires_at is None:
            return  # revoked again meanwhile
        lang = member_language(self.app, user_id)
        now = self.app.now()
        header = texts.t(lang, "granted", duration=texts.duration_text(payload["duration"], lang),
                         date=texts.format_date(expires_at, lang), days_left=texts.days_left(expires_at, now, lang))
        self._send_way_in(user_id, lang, header)

    def _broadcast(self, user_id: int, payload: dict) -> None:
        broadcast = self.db.broadcast(payload["broadcast_id"])
        self.send(user_id, broadcast["text"])

    def _broadcast_started(self, admin_chat: int, payload: dict) -> None:
        """The admin's progress message, then an edit if the members' rows got ahead of it."""
        broadcast_id = payload["broadcast_id"]
        broadcast = self.db.broadcast(broadcast_id)
        if broadcast is None or broadcast["message_id"] is not None:
            return
        lang = member_language(self.app, admin_chat)
        shown = broadcast["sent"] + broadcast["failed"]
        progress = self.send(admin_chat, self._broadcast_text(broadcast, lang))
        self._broadcast_edits[broadcast_id] = (time.monotonic(), shown)
        # Set before the counts are read again; a member's row counts before it reads the id.
        # So whichever finishes last sees the other's write, and the last count is shown.
        self.db.set_broadcast_message(broadcast_id, progress.message_id)
        now = self.db.broadcast(broadcast_id)
        if now["sent"] + now["failed"] != shown:
            self._broadcast_progress(broadcast_id)

    @staticmethod
    def _broadcast_text(broadcast, lang: str) -> str:
        finished = broadcast["sent"] + broadcast["failed"] >= broadcast["total"]
        key = "admin_broadcast_done" if finished else "admin_broadcast_progress"
        return texts.t(lang, key, total=broadcast["total"], sent=broadcast["sent"], failed=broadcast["failed"])

    def _broadcast_progress(self, broadcast_id: int) -> None:
        """Edit the admin's progress message: every few seconds, and at the end."""
        broadcast = self.db.broadcast(broadcast_id)
        if broadcast is None or broadcast["message_id"] is None:
            return
        done = broadcast["sent"] + broadcast["failed"]
        finished = done >= broadcast["total"]
        last_edit, last_done = self._broadcast_edits.get(broadcast_id, (0.0, 0))
        if not finished and (time.monotonic() - last_edit < BROADCAST_EDIT_EVERY or done == last_done):
            return
        self._broadcast_edits[broadcast_id] = (time.monotonic(), done)
        text = self._broadcast_text(broadcast, member_language(self.app, broadcast["admin_chat"]))
        try:
            self.call(self.bot.edit_message_text, text, broadcast["admin_chat"], broadcast["message_id"])
        except Stopping:
            raise
        except Exception as exc:  # a progress message is not worth a retry
            log.info("broadcast %s: progress not shown: %s", broadcast_id, classify(exc).description)
        if finished:
            self._broadcast_edits.pop(broadcast_id, None)
            log.info("broadcast %s finished: %s sent, %s failed", broadcast_id, broadcast["sent"],
                     broadcast["failed"])

    def _admin_token(self, admin_id: int, payload: dict) -> None:
        lang = member_language(self.app, admin_id)
        if payload["bad"]:
            self.send(admin_id, texts.t(lang, "admin_alert_token", error=payload.get("error", "")))
        else:
            self.send(admin_id, texts.t(lang, "admin_alert_token_back"))

    def _admin_webhook(self, admin_id: int, payload: dict) -> None:
        lang = member_language(self.app, admin_id)
        url = self.app.config.public_webhook_url or f"https://your-domain.com{self.app.config.webhook_path}"
        self.send(admin_id, texts.t(lang, "admin_alert_webhook", invoice_id=payload.get("invoice_id"), url=url))

    def _admin_webhook_unusable(self, admin_id: int, payload: dict) -> None:
        lang = member_language(self.app, admin_id)
        self.send(admin_id, texts.t(lang, "admin_alert_webhook_unusable", error=payload.get("error"),
                                    record_id=payload.get("record_id")))

    def _admin_invoice_unreadable(self, admin_id: int, payload: dict) -> None:
        lang = member_language(self.app, admin_id)
        self.send(admin_id, texts.t(lang, "admin_alert_invoice_unreadable", invoice_id=payload.get("invoice_id"),
                                    user_id=payload.get("user_id"), error=payload.get("error")))

    def _admin_migrated(self, admin_id: int, payload: dict) -> None:
        lang = member_language(self.app, admin_id)
        self.send(admin_id, texts.t(lang, "admin_chat_migrated", chat=self.chat_title(payload["new"], lang),
                                    old=payload["old"], new=payload["new"]))

    def _admin_rights(self, admin_id: int, payload: dict) -> None:
        lang = member_language(self.app, admin_id)
        chat = self.chat_title(payload["chat_id"], lang)
        if not payload["bad"]:
            text = texts.t(lang, "admin_rights_back", chat=chat)
        else:
            missing = ", ".join(texts.t(lang, key) for key in payload["missing"])
            text = texts.t(lang, "admin_rights_lost", chat=chat, missing=missing)
        self.send(admin_id, text)


class Sweeper:
    """Every SWEEP_INTERVAL, first at start: stale join requests, reminders, expiries, the bot's rights."""

    def __init__(self, app: App):
        self.app = app

    def run(self) -> None:
        interval = self.app.config.sweep_interval
        delay = 0.0
        log.info("sweeper started, every %ss", interval)
        while not self.app.stop.wait(delay):
            self.app.heartbeat("sweeper")
            delay = interval
            try:
                self.sweep_once()
            except Exception:
                log.exception("sweep failed")
        log.info("sweeper stopped")

    def sweep_once(self) -> dict[str, int]:
        now = self.app.now()
        db, config = self.app.db, self.app.config
        done = {"declined": db.queue_declines(now - JOIN_REQUEST_WAIT, now),
                "reminded": db.queue_reminders(now, config.remind_before), "expired": 0,
                "undone": db.undo_early_removals(now),
                "pulled back": db.pull_back_future_work(now, LONGEST_WAIT)}
        while not self.app.stop.is_set():
            batch = db.queue_expiries(now, config.grace_period)
            done["expired"] += batch
            if batch < 500:
                break
        if any(done.values()):
            log.info("sweep: %(expired)d expired, %(reminded)d reminders, %(declined)d join requests declined, "
                     "%(undone)d removals undone and %(pulled back)d messages made due (the clock had run ahead)",
                     done)
            self.app.wake_sender()
        db.forget_updates(now - UPDATES_KEPT)
        if self.app.bot is not None:
            self.check_rights(now)
        return done

    def check_rights(self, now: int) -> None:
        """Can the bot still invite and remove members in every club chat? Alert admins on a change."""
        app = self.app
        bot_id = app.bot_id
        if bot_id is None:
            try:
                bot_id = app.bot_id = self._call(app.bot.get_me).id
            except Exception as exc:
                log.warning("rights check skipped: getMe failed: %s", classify(exc).description)
                return
        for chat_id in app.club_chats():
            try:
                member = self._call(app.bot.get_chat_member, chat_id, bot_id)
                if chat_id not in app.chat_types:
                    chat = self._call(app.bot.get_chat, chat_id)
                    app.chat_types[chat_id], app.chat_titles[chat_id] = chat.type, chat.title or ""
            except Stopping:
                return
            except Exception as exc:
                failure = classify(exc)
                if failure.kind not in ("blocked", "rejected"):
                    log.warning("rights check of chat %s failed: %s", chat_id, failure.description)
                    continue
                missing = ["right_admin"]
            else:
                missing = missing_rights(member, app.chat_types.get(chat_id))
            if app.db.alert_state(f"rights:{chat_id}", bool(missing), now, app.config.admin_ids, Kind.ADMIN_RIGHTS,
                                  {"chat_id": chat_id, "missing": missing}):
                if missing:
                    log.error("the bot lost its rights in chat %s: %s", chat_id, ", ".join(missing))
                else:
                    log.info("the bot's rights in chat %s are back; missed removals follow", chat_id)
                    app.db.retry_removals_now(now)
                app.wake_sender()

    def _call(self, method, *args):
        return budgeted_call(self.app, method, *args)


def budgeted_call(app: App, method, *args, **kwargs):
    """A Bot API call through the shared rate budget. A club group upgraded to a supergroup
    answers calls to its old id (the first argument) with the new one: recorded, asked again."""
    for attempt in range(2):
        if not app.limiter.acquire(app.stop):
            raise Stopping()
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            new_id = migrated_to(exc)
            if attempt or new_id is None or not args or args[0] == new_id:
                raise
            app.follow_migration(args[0], new_id)
            args = (new_id, *args[1:])
    raise AssertionError("unreachable")


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


class Poller:
    """Asks Crypto Pay about pending invoices every POLL_INTERVAL, first at start."""

    def __init__(self, app: App):
        self.app = app
        # The payments this poller applied, looked at again once their webhooks had time to come.
        self.watch = WebhookWatch()

    def run(self) -> None:
        interval = self.app.config.poll_interval
        failures = 0
        delay = 0.0
        log.info("payment poller started, every %ss", interval)
        while not self.app.stop.wait(delay):
            self.app.heartbeat("poller")
            try:  # first, and whether or not Crypto Pay answers below
                self.watch.check(self.app)
            except Exception:
                log.exception("poller: checking whether webhooks arrive failed")
            try:
                poll_once(self.app, self.watch)
            except CryptoPayError as exc:
                failures += 1
                delay = min(interval * 2 ** failures, max(interval, 300))
                log.warning("poller: Crypto Pay failed (%s); next try in %ss", exc, delay)
                continue
            except Exception:
                failures += 1
                delay = interval
                log.exception("poller: unexpected failure")
                continue
            if failures:
                log.info("poller: Crypto Pay answers again")
            failures = 0
            delay = interval
        log.info("payment poller stopped")


def start_thread(name: str, target) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
