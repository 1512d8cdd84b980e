"""The bot's handlers: plain functions, registered in one register_handlers(bot, app)."""
from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from telebot import TeleBot, types

import admin
import codes
import gifts
import refunds
import stars
import texts
from access import missing_rights, report_rights
from cryptopay import CryptoPayError
from db import PRIORITY_NOW
from kinds import Kind
from payments import buy, check, club_name
from runtime import App
from views import GIFT_MENU, deep_link, plan_title, plans_keyboard

log = logging.getLogger("clubbot.bot")


# --- handlers ---

def _remember(app: App, user: types.User) -> str:
    """Record the member as last seen; return their language."""
    app.db.upsert_member(user.id, user.username, user.first_name, user.language_code, app.now())
    return texts.language_for(user.language_code, app.config.default_language)


def _reply(app: App, chat_id: int, text: str, **kwargs) -> None:
    app.limiter.acquire(app.stop, chat_id=chat_id)
    app.bot.send_message(chat_id, text, **kwargs)


def on_start(app: App, message: types.Message) -> None:
    lang = _remember(app, message.from_user)
    parameter = _start_parameter(message.text)
    note, given = None, False
    opener = DEEP_LINKS.get(parameter[:2])
    if opener is not None:
        note, given = opener(app, message.from_user.id, parameter[2:], lang)
    elif parameter and not START_PARAMETER.fullmatch(parameter):
        note = texts.t(lang, "link_invalid")  # one of others' own (an ad's tag, say) is only a /start
    resent = _resend_gifts(app, message.from_user.id, lang)  # a buyer back after blocking the bot
    active = _menu(app, message, lang, "\n\n".join(filter(None, (note, resent))) or None)
    if active and not given:
        # The way in, again: the sender approves a waiting request or sends the links. (Time
        # given just now brings it with its own message.)
        queue_way_in(app, message.from_user.id, app.now())
    if active or given:
        app.wake_sender()


def _resend_gifts(app: App, user_id: int, lang: str) -> str | None:
    """Gift links the member bought that could not be delivered (they had blocked the bot) are
    queued again: the note that says so, or None when there were none."""
    if not app.db.resend_gift_links(user_id, app.now()):
        return None
    app.wake_sender()
    return texts.t(lang, "gift_resent")


def _start_parameter(text: str | None) -> str:
    """What a deep link put after /start ("" for none). Telegram carries at most 64 characters:
    a longer one was typed, and is no link of ours, whatever it starts with."""
    words = (text or "").split()
    if len(words) != 2:
        return ""
    return words[1] if len(words[1]) <= 64 else BROKEN


def _open_code(app: App, user_id: int, name: str, lang: str) -> tuple[str | None, bool]:
    """t.me/<bot>?start=c-NAME: a discount code, attached to the member's next invoices."""
    return texts.t(lang, codes.apply(app.db, user_id, name, app.now(), "link")), False


def _open_gift(app: App, user_id: int, token: str, lang: str) -> tuple[str | None, bool]:
    """t.me/<bot>?start=g-TOKEN: a gift link, redeemed by whoever opens it first."""
    answer, duration = gifts.redeem(app.db, user_id, token, app.now())
    return texts.t(lang, answer, duration=texts.duration_text(duration, lang) if duration else ""), \
        answer == "gift_redeemed"


def _open_referral(app: App, user_id: int, ref: str, lang: str) -> tuple[str | None, bool]:
    """t.me/<bot>?start=r-REF: a member's invitation. Attributed when it counts; the member
    hears only of a link that is broken or their own (not whether a friend's link counted)."""
    if app.config.referral_bonus is None:
        return None, False  # the programme is off: a plain /start
    if not REF.fullmatch(ref):
        return texts.t(lang, "link_invalid"), False
    result = app.db.attribute_referral(user_id, ref, app.now())
    if result == "referred":
        log.info("member %s arrived by a referral link", user_id)
    notes = {"unknown": "link_invalid", "self": "referral_own_link"}
    return (texts.t(lang, notes[result]) if result in notes else None), False


# A deep link's prefix -> what opens it: (a note above the menu, whether time was given).
DEEP_LINKS: dict[str, Callable[[App, int, str, str], tuple[str | None, bool]]] = {
    "c-": _open_code,
    "g-": _open_gift,
    "r-": _open_referral,
}
START_PARAMETER = re.compile(r"[A-Za-z0-9_-]{1,64}")
BROKEN = "?"  # _start_parameter's answer for a parameter too long for a deep link
REF = re.compile(r"[A-Za-z0-9_-]{8}")


def on_text(app: App, message: types.Message) -> None:
    """Plain text, not a command: the menu that /start shows, rather than silence."""
    _menu(app, message, _remember(app, message.from_user))


def on_code(app: App, message: types.Message) -> None:
    """A member's /code NAME: the code is attached to their next invoices, and the plans shown
    at its prices; a code that does not work gets one answer, whatever the reason."""
    lang = _remember(app, message.from_user)
    words = (message.text or "").split()[1:]
    if len(words) != 1:
        _reply(app, message.chat.id, texts.t(lang, "code_usage"))
        return
    answer = codes.apply(app.db, message.from_user.id, words[0], app.now(), "command")
    if answer != "code_applied":
        _reply(app, message.chat.id, texts.t(lang, answer))
        return
    _menu(app, message, lang, texts.t(lang, answer))


def _menu(app: App, message: types.Message, lang: str, note: str | None = None) -> bool:
    """The greeting and the plans as buttons (to renew, for a member with time left, who is
    also told the status), after `note` if given. True for a member with time left."""
    now = app.now()
    user_id = message.from_user.id
    expires_at = app.db.expires_at(user_id)
    club = club_name(app)
    active = bool(expires_at and expires_at > now)
    if active:
        text = texts.t(lang, "greeting_active", club=club, date=texts.format_date(expires_at, lang),
                       days_left=texts.days_left(expires_at, now, lang))
    else:
        text = texts.t(lang, "greeting", club=club)
    _reply(app, message.chat.id, f"{note}\n\n{text}" if note else text,
           reply_markup=plans_keyboard(app, lang, renew=active, user_id=user_id, gift_button=True))
    return active


def on_gift(app: App, message: types.Message) -> None:
    """A member's /gift: the plans to buy as a gift, and the gifts they bought with whether each was taken."""
    lang = _remember(app, message.from_user)
    _gift_menu(app, message.from_user.id, lang)


def on_gift_menu(app: App, call: types.CallbackQuery) -> None:
    lang = _remember(app, call.from_user)
    _answer(app, call)
    _gift_menu(app, call.from_user.id, lang)


def _gift_menu(app: App, user_id: int, lang: str) -> None:
    if not any(not plan.is_trial for plan in app.config.plans):
        _reply(app, user_id, texts.t(lang, "gift_no_plans"))
        return
    text = "\n\n".join(filter(None, (texts.t(lang, "gift_choose"), _resend_gifts(app, user_id, lang))))
    bought = app.db.gifts(bought_by=user_id)
    if bought:
        lines = [texts.t(lang, "gift_line_taken" if g["redeemed_at"] else "gift_line_waiting", gift=g["short_id"],
                         title=_plan_name(app, g["plan_id"], lang)) for g in bought[-20:]]
        text += "\n\n" + texts.t(lang, "gift_yours", gifts="\n".join(lines))
    _reply(app, user_id, text, reply_markup=plans_keyboard(app, lang, renew=False, user_id=user_id, for_gift=True))


def _plan_name(app: App, plan_id: str, lang: str) -> str:
    plan = app.config.plan(plan_id)
    return plan_title(plan, lang) if plan else plan_id


def on_status(app: App, message: types.Message) -> None:
    """The member's time, and with referrals on, their invitation link and what it earned."""
    lang = _remember(app, message.from_user)
    now = app.now()
    expires_at = app.db.expires_at(message.from_user.id)
    if expires_at is None:
        text = texts.t(lang, "status_none")
    elif expires_at > now:
        text = texts.t(lang, "status_active", date=texts.format_date(expires_at, lang),
                       days_left=texts.days_left(expires_at, now, lang))
    else:  # ended, or revoked (then the date is the revoke's)
        ended = app.db.subscription(message.from_user.id)["expires_at"]
        text = texts.t(lang, "status_expired", date=texts.format_date(ended, lang))
    text, keyboard = _with_renewal(app, message.from_user.id, lang, text, now)
    bonus = app.config.referral_bonus
    if bonus is not None:
        count, earned = app.db.referral_earnings(message.from_user.id)
        text += "\n\n" + texts.t(lang, "referral_status", bonus=texts.duration_text(bonus, lang), count=count,
                                    earned=texts.duration_text(earned, lang) if earned else "0",
                                    link=deep_link(app.bot_username, "r", app.db.member_ref(message.from_user.id)))
    _reply(app, message.chat.id, text, reply_markup=keyboard)


def _with_renewal(app: App, user_id: int, lang: str, text: str, now: int):
    """/status with a Stars subscription: when it renews (or that it will not), and the button to
    cancel or resume the renewal."""
    subscription = app.db.star_subscription(user_id)
    if subscription is None or subscription["renews_at"] <= now:
        return text, None
    canceled = subscription["canceled_at"] is not None
    date = texts.format_date(subscription["renews_at"], lang)
    keyboard = types.InlineKeyboardMarkup()
    keyboard.add(types.InlineKeyboardButton(texts.t(lang, "renewal_resume_button" if canceled else
                                                    "renewal_cancel_button"),
                                            callback_data=RENEWAL_RESUME if canceled else RENEWAL_CANCEL))
    return text + "\n" + texts.t(lang, "status_renewal_off" if canceled else "status_renews", date=date), keyboard


def on_link(app: App, message: types.Message) -> None:
    lang = _remember(app, message.from_user)
    now = app.now()
    expires_at = app.db.expires_at(message.from_user.id)
    if not expires_at or expires_at <= now:
        _reply(app, message.chat.id, texts.t(lang, "status_none"))
        return
    queue_way_in(app, message.from_user.id, now)
    app.wake_sender()


def queue_way_in(app: App, user_id: int, now: int) -> None:
    """One waiting "way in" per member: asking again while it waits adds nothing."""
    app.db.enqueue(Kind.WAY_IN, user_id, {}, now, priority=PRIORITY_NOW, pending_key=f"way_in:{user_id}")


def on_paysupport(app: App, message: types.Message) -> None:
    """/paysupport, which Telegram asks every bot taking Stars to answer: the member is told the
    admins will write, and the admins get who asks, with their latest payments' references."""
    lang = _remember(app, message.from_user)
    user = message.from_user
    now = app.now()
    payments = [admin.payment_ref(row).strip() for row in app.db.member_invoices(user.id, 50)
                if row["status"] in ("paid", "refunded", "mismatch")][:5]
    text = (f"/paysupport from {admin.member_name(user.id, user.username)}: "
            f"payments {', '.join(filter(None, payments)) or 'none'}. /user {user.id} shows them.")
    for admin_id in sorted(app.config.admin_ids):
        # One a member a minute, however often they ask: a flood must not flood the admins.
        app.db.enqueue(Kind.TEXT, admin_id, {"text": text}, now, priority=PRIORITY_NOW,
                       dedupe_key=f"paysupport:{user.id}:{now // 60}:{admin_id}")
    app.wake_sender()
    _reply(app, message.chat.id, texts.t(lang, "paysupport"))


def on_help(app: App, message: types.Message) -> None:
    lang = _remember(app, message.from_user)
    _reply(app, message.chat.id, texts.t(lang, "help", club=club_name(app)))


def on_unknown_command(app: App, message: types.Message) -> None:
    lang = texts.language_for(message.from_user.language_code, app.config.default_language)
    _reply(app, message.chat.id, texts.t(lang, "unknown_command"))


def _answer(app: App, call: types.CallbackQuery, text: str | None = None) -> bool:
    """Answer a button press; False if Telegram no longer takes the answer (too old)."""
    try:
        app.bot.answer_callback_query(call.id, text, show_alert=bool(text))
        return True
    except Exception as exc:
        log.info("callback answer not taken: %s", exc)
        return False


def on_plan(app: App, call: types.CallbackQuery) -> None:
    """A plan's button: "plan:ID" buys it, "gift:ID" buys it as a gift."""
    lang = _remember(app, call.from_user)
    kind, _, plan_id = call.data.partition(":")
    plan, gift = app.config.plan(plan_id), kind == "gift"
    if plan is None or (gift and plan.is_trial):
        _answer(app, call, texts.t(lang, "plan_unknown"))
        return
    _answer(app, call)  # at once: creating the invoice may take a while
    title = plan_title(plan, lang)
    try:
        # A free plan is a trial, whatever its currency says.
        purchase = (stars.buy if plan.is_stars and not plan.is_trial else buy)(app, call.from_user.id, plan,
                                                                               title, gift)
    except (CryptoPayError, stars.StarsUnavailable):
        _reply(app, call.from_user.id, texts.t(lang, "payments_unavailable"))
        return
    refusal = _refusal(purchase)
    if refusal is not None:
        markup = plans_keyboard(app, lang, renew=False, user_id=call.from_user.id) if purchase.code_refused else None
        _reply(app, call.from_user.id, texts.t(lang, refusal), reply_markup=markup)
        return
    if purchase.trial_expires_at is not None:
        return  # the sender brings "active until" and the way in
    _send_invoice(app, call.from_user.id, lang, plan, title, purchase, gift)


def _refusal(purchase) -> str | None:
    """The text key of why nothing was made to pay, if so."""
    if purchase.trial_refused:
        return "trial_used"
    if purchase.code_refused:
        return "code_invalid"
    return "stars_renewing" if purchase.renewing else None


def _send_invoice(app: App, user_id: int, lang: str, plan, title: str, purchase, gift: bool) -> None:
    """The invoice as a message: its price, the button to pay, and for Crypto Pay the check button."""
    invoice = purchase.invoice
    price = texts.price(Decimal(invoice["amount"]), plan.currency)
    keyboard = types.InlineKeyboardMarkup()
    if invoice["pay_url"]:
        keyboard.add(types.InlineKeyboardButton(texts.t(lang, "pay_button", price=price), url=invoice["pay_url"]))
    if plan.is_stars:
        text = texts.t(lang, "invoice_stars_renews" if plan.renews and not gift else "invoice_stars",
                       title=title, price=price)
    else:
        keyboard.add(types.InlineKeyboardButton(texts.t(lang, "check_button"),
                                                callback_data=f"check:{invoice['payment_uuid']}"))
        text = texts.t(lang, "invoice", title=title, price=price,
                       date=texts.format_date(invoice["expires_at"], lang))
    if gift:
        text += "\n\n" + texts.t(lang, "invoice_gift")
    if purchase.code is not None:
        text += "\n\n" + texts.t(lang, "invoice_code", code=purchase.code["name"],
                                  old=texts.price(plan.amount, plan.currency))
    _reply(app, user_id, text, reply_markup=keyboard)


def on_pre_checkout(app: App, query: types.PreCheckoutQuery) -> None:
    """Telegram asks, within 10 seconds, whether to take a Stars payment."""
    lang = texts.language_for(query.from_user.language_code, app.config.default_language)
    refusal = stars.checkout(app, query.from_user.id, query.invoice_payload, query.currency, query.total_amount)
    app.bot.answer_pre_checkout_query(query.id, refusal is None,
                                      error_message=None if refusal is None else texts.t(lang, refusal))
    if refusal is not None:
        log.info("pre-checkout of member %s refused: %s", query.from_user.id, refusal)


def on_successful_payment(app: App, message: types.Message) -> None:
    """A Stars payment (the first, or a renewal): applied once, by its charge id."""
    _remember(app, message.from_user)
    stars.apply(app, stars.from_successful_payment(message.from_user.id, message.successful_payment), "telegram")


def on_renewal(app: App, call: types.CallbackQuery) -> None:
    """The Cancel renewal / Resume renewal buttons under /status."""
    lang = _remember(app, call.from_user)
    answer = stars.set_renewal(app, call.from_user.id, call.data == RENEWAL_CANCEL)
    if not _answer(app, call, texts.t(lang, answer)):
        _reply(app, call.from_user.id, texts.t(lang, answer))


RENEWAL_CANCEL, RENEWAL_RESUME = "renewal:cancel", "renewal:resume"


def on_check(app: App, call: types.CallbackQuery) -> None:
    lang = _remember(app, call.from_user)
    answer = check(app, call.data.partition(":")[2], call.from_user.id)
    if not _answer(app, call, texts.t(lang, answer)):
        _reply(app, call.from_user.id, texts.t(lang, answer))  # the press expired while we asked


def on_join_request(app: App, request: types.ChatJoinRequest) -> None:
    if request.chat.id not in app.club_chats():
        return
    user = request.from_user
    _remember(app, user)
    now = app.now()
    app.db.record_join_request(request.chat.id, user.id, request.user_chat_id, now)
    expires_at = app.db.expires_at(user.id)
    if expires_at and expires_at > now:
        app.db.enqueue(Kind.APPROVE, user.id, {"chat_id": request.chat.id}, now, priority=PRIORITY_NOW,
                       pending_key=f"approve:{request.chat.id}:{user.id}")
    elif request.user_chat_id:
        app.db.enqueue(Kind.JOIN_PLANS, request.user_chat_id,
                       {"user_id": user.id, "club_chat_id": request.chat.id}, now, priority=PRIORITY_NOW,
                       pending_key=f"join_plans:{request.chat.id}:{user.id}")
    log.info("join request from member %s to chat %s (%s)", user.id, request.chat.id,
             "active" if expires_at and expires_at > now else "no time left")
    app.wake_sender()


@dataclass(frozen=True)
class AdminRequest:
    """One admin command as a handler of ADMIN_COMMANDS sees it."""

    app: App
    message: types.Message
    lang: str
    rest: str  # everything after the command word
    now: int

    @property
    def args(self) -> list[str]:
        return self.rest.split()

    @property
    def by(self) -> str:
        return f"telegram:{self.message.from_user.id}"

    def exactly(self, count: int, usage: str) -> list[str]:
        """The command's words, or the usage text (AdminError) when there are not `count` of them."""
        if len(self.args) != count:
            raise admin.AdminError(usage)
        return self.args


def _admin_stats(request: AdminRequest) -> str:
    return admin.stats_text(request.app.db, request.now, request.lang)


def _admin_grant(request: AdminRequest) -> str:
    user, duration = request.exactly(2, "admin_usage_grant")
    text = admin.grant(request.app.db, user, duration, request.now, request.by, request.lang,
                       command_key=command_key(request.message))
    request.app.wake_sender()
    return text


def _admin_revoke(request: AdminRequest) -> str:
    [user] = request.exactly(1, "admin_usage_revoke")
    text = admin.revoke(request.app.db, user, request.now, request.by, request.lang,
                        command_key=command_key(request.message))
    request.app.wake_sender()
    return text


def _admin_user(request: AdminRequest) -> str:
    [user] = request.exactly(1, "admin_usage_user")
    return admin.user_text(request.app.db, user, request.now, request.lang)


def _admin_export(request: AdminRequest) -> None:
    _send_export(request.app, request.message.chat.id, request.lang)


def _admin_broadcast(request: AdminRequest) -> None:
    body = request.rest.strip()
    if not body:
        raise admin.AdminError("admin_usage_broadcast")
    _start_broadcast(request.app, request.message, body)


def _admin_code(request: AdminRequest) -> str | None:
    """/code add NAME ..., /code disable NAME, /code list; an admin's /code NAME applies it as a member's."""
    words = request.args
    action = words[0].lower() if words else ""
    if action == "add":
        return admin.code_add(request.app.db, request.app.config, words[1:], request.now, request.by, request.lang,
                              request.app.bot_username)
    if action == "disable":
        [name] = request.exactly(2, "admin_usage_code")[1:]
        return admin.code_disable(request.app.db, name, request.now, request.by, request.lang)
    if action == "list" and len(words) == 1:
        return admin.codes_text(request.app.db, request.now, request.lang)
    on_code(request.app, request.message)
    return None


def _admin_codes(request: AdminRequest) -> str:
    request.exactly(0, "admin_usage_code")
    return admin.codes_text(request.app.db, request.now, request.lang)


def _admin_gift(request: AdminRequest) -> str | None:
    """/gift create PLAN COUNT: single-use links as a CSV file; /gift list; an admin's plain /gift
    is a member's (the plans to give); anything else, the usage."""
    words = request.args
    action = words[0].lower() if words else ""
    usage = admin.AdminError("admin_usage_gift", max=gifts.MAX_COUNT)
    if not words:
        on_gift(request.app, request.message)
        return None
    if action == "list" and len(words) == 1:
        return admin.gifts_text(gifts.list_lines(request.app.db), request.lang)
    if action != "create" or len(words) != 3 or not words[2].isdecimal() or not words[2].isascii():
        raise usage
    app, chat_id, plan_id, count = request.app, request.message.chat.id, words[1], int(words[2])

    def send(body: bytes) -> None:
        app.limiter.acquire(app.stop, chat_id=chat_id)
        app.bot.send_document(chat_id, io.BytesIO(body), visible_file_name=f"gift-links-{plan_id}.csv",
                              caption=texts.t(request.lang, "admin_gift_created", count=count, plan=plan_id))
    try:
        made = gifts.send_and_store(app.db, app.config, plan_id, count, request.now, request.by, app.bot_username,
                                    send, command_key(request.message))
    except gifts.GiftError:
        raise usage from None
    except Exception:
        log.exception("gift create: the file could not be sent; no links were stored")
        return texts.t(request.lang, "admin_gift_not_sent")
    return None if made else texts.t(request.lang, "admin_gift_done_before")


def _admin_referrals(request: AdminRequest) -> str:
    request.exactly(0, "admin_usage_referrals")
    return admin.referrers_text(request.app.db, request.lang, request.app.config.referral_bonus)


def _admin_refund(request: AdminRequest) -> None:
    """/refund PAYMENT: what it will do, with the buttons to do it or not; nothing is sent yet."""
    [ref] = request.exactly(1, "admin_usage_refund")
    row = refunds.find(request.app, ref)
    lang = request.lang
    keyboard = types.InlineKeyboardMarkup()
    keyboard.row(types.InlineKeyboardButton(texts.t(lang, "refund_button", price=refunds.refund_price(row)),
                                            callback_data=refunds.BUTTON_PREFIX + row["payment_uuid"]),
                 types.InlineKeyboardButton(texts.t(lang, "refund_cancel_button"), callback_data=refunds.CANCEL))
    _reply(request.app, request.message.chat.id, refunds.question(request.app, row, lang), reply_markup=keyboard)


# Command -> handler; a handler returns the reply, or None when it answered in its own way.
# Registered from these keys: a command exists exactly when it has a handler.
ADMIN_COMMANDS: dict[str, Callable[[AdminRequest], str | None]] = {
    "stats": _admin_stats,
    "grant": _admin_grant,
    "revoke": _admin_revoke,
    "user": _admin_user,
    "export": _admin_export,
    "broadcast": _admin_broadcast,
    "code": _admin_code,
    "codes": _admin_codes,
    "gift": _admin_gift,
    "referrals": _admin_referrals,
    "refund": _admin_refund,
}


def on_admin(app: App, message: types.Message) -> None:
    """The admin commands; registered only for ADMIN_IDS, so to anyone else they do not exist."""
    lang = _remember(app, message.from_user)
    word, _, rest = (message.text or "").partition(" ")
    handler = ADMIN_COMMANDS[word.lstrip("/").split("@")[0].lower()]
    try:
        text = handler(AdminRequest(app, message, lang, rest, app.now()))
    except admin.AdminError as error:
        text = error.text(lang)
    if text is not None:
        _reply(app, message.chat.id, text)


def on_refund_button(app: App, call: types.CallbackQuery) -> None:
    """The buttons under /refund's question: Refund (refund:<payment uuid>) or Cancel (refund:no).
    Only an admin's press counts; pressed twice, or by two admins, it refunds once."""
    lang = _remember(app, call.from_user)
    if call.from_user.id not in app.config.admin_ids:
        log.warning("refund button pressed by %s, not an admin; refused", call.from_user.id)
        _answer(app, call, texts.t(lang, "refund_admins_only"))
        return
    _answer(app, call)  # at once: the refund may take a while
    if call.data == refunds.CANCEL:
        text = texts.t(lang, "refund_canceled")
    else:
        row = app.db.invoice_by_uuid(call.data.removeprefix(refunds.BUTTON_PREFIX))
        if row is None:
            text = texts.t(lang, "refund_unknown", payment="?")
        else:
            result = refunds.run(app, row, f"telegram:{call.from_user.id}")
            text = refunds.result_text(app, result, lang)
    _show_outcome(app, call, text)


def _show_outcome(app: App, call: types.CallbackQuery, text: str) -> None:
    """The question's message becomes the answer (its buttons gone); a new message if it cannot."""
    if call.message is not None:
        try:
            app.limiter.acquire(app.stop, chat_id=call.message.chat.id)
            app.bot.edit_message_text(text, call.message.chat.id, call.message.message_id)
            return
        except Exception as exc:
            log.info("refund: the question could not be edited (%s); answered anew", exc)
    _reply(app, call.from_user.id, text)


def _send_export(app: App, chat_id: int, lang: str) -> None:
    buffer = io.StringIO()
    admin.write_csv(app.db, buffer)
    day = datetime.fromtimestamp(app.now(), UTC).strftime("%Y-%m-%d")
    app.limiter.acquire(app.stop, chat_id=chat_id)
    app.bot.send_document(chat_id, io.BytesIO(buffer.getvalue().encode("utf-8")),
                          visible_file_name=f"clubbot-export-{day}.csv",
                          caption=texts.t(lang, "admin_export_caption", date=day))


def _start_broadcast(app: App, message: types.Message, body: str) -> None:
    """Queue the broadcast and its progress message (the sender shows it first), once per command."""
    started = app.db.start_broadcast(message.chat.id, body, app.now(), command_key=command_key(message))
    if started is None:
        log.info("broadcast of message %s was queued before; not again", message.message_id)
        return
    log.info("broadcast %s queued to %s members", *started)
    app.wake_sender()


def command_key(message: types.Message) -> str:
    """What makes a command once-only: the message that asked for it."""
    return f"{message.chat.id}:{message.message_id}"


def on_chat_migrated(app: App, message: types.Message) -> None:
    """A club group became a supergroup (Telegram's service message in the old group)."""
    if message.chat.id in app.club_chats() and message.migrate_to_chat_id:
        app.follow_migration(message.chat.id, message.migrate_to_chat_id)


def on_my_chat_member(app: App, update: types.ChatMemberUpdated) -> None:
    """The bot's own status in a chat changed. In a club chat, its rights are read from the update
    (the admins hear of what is missing, as from the sweep); added elsewhere by an admin, the admins
    are told the chat's id and title and what is missing, so that adding a chat needs no wizard.
    Anyone else adding the bot to their group is only logged."""
    chat, new = update.chat, update.new_chat_member
    if chat.type == "private":
        return  # a member blocked or unblocked the bot
    if chat.id in app.club_chats():  # the update says what the bot now has there: no need to ask
        report_rights(app, chat.id, missing_rights(new, chat.type), app.now())
        return
    if new.status not in ("administrator", "member", "creator", "restricted"):
        return  # left or removed from a chat that is not the club's
    adder = update.from_user.id if update.from_user else None
    if adder not in app.config.admin_ids:
        log.info("the bot was added to chat %s (%s) by %s, not an admin; nothing to do", chat.id, chat.type, adder)
        return
    missing = missing_rights(new, chat.type)
    payload = {"chat_id": chat.id, "title": chat.title or "", "missing": missing}
    now = app.now()
    for admin_id in sorted(app.config.admin_ids):
        app.db.enqueue(Kind.ADMIN_CHAT_ADDED, admin_id, payload, now, priority=PRIORITY_NOW,
                       # Each change once (a restart handles an update again); "added", then
                       # "promoted" in the same second, are two changes.
                       dedupe_key=f"chat_added:{chat.id}:{update.date}:{new.status}:{','.join(missing)}:{admin_id}")
    log.info("the bot was added to chat %s \"%s\" by admin %s; missing rights: %s", chat.id, chat.title, adder,
             ", ".join(missing) or "none")
    app.wake_sender()


def _guarded(app: App, handler):
    """Run a handler; one failing update is logged, not fatal. tg.Stopping is no failure: it goes
    on to the handler thread (updates.UpdatePoller), which leaves the update for the next start."""
    def run(update):
        try:
            handler(app, update)
        except Exception:
            log.exception("%s failed", handler.__name__)
    run.__name__ = handler.__name__
    return run


def register_handlers(bot: TeleBot, app: App) -> None:
    private = ["private"]
    bot.register_message_handler(_guarded(app, on_successful_payment), content_types=["successful_payment"],
                                 chat_types=private)
    bot.register_message_handler(_guarded(app, on_start), commands=["start"], chat_types=private)
    bot.register_message_handler(_guarded(app, on_status), commands=["status"], chat_types=private)
    bot.register_message_handler(_guarded(app, on_help), commands=["help"], chat_types=private)
    bot.register_message_handler(_guarded(app, on_paysupport), commands=["paysupport"], chat_types=private)
    bot.register_message_handler(_guarded(app, on_link), commands=["link"], chat_types=private)
    bot.register_message_handler(
        _guarded(app, on_admin), commands=list(ADMIN_COMMANDS), chat_types=private,
        func=lambda m: m.from_user is not None and m.from_user.id in app.config.admin_ids)
    # after the admins' (their /code and /gift do more)
    bot.register_message_handler(_guarded(app, on_code), commands=["code"], chat_types=private)
    bot.register_message_handler(_guarded(app, on_gift), commands=["gift"], chat_types=private)
    bot.register_message_handler(
        _guarded(app, on_unknown_command), chat_types=private,
        func=lambda m: bool(m.text) and m.text.startswith("/"))
    bot.register_message_handler(_guarded(app, on_text), chat_types=private)  # text, after every command
    bot.register_callback_query_handler(_guarded(app, on_plan),
                                        func=lambda c: (c.data or "").startswith(("plan:", "gift:")))
    bot.register_callback_query_handler(_guarded(app, on_gift_menu), func=lambda c: c.data == GIFT_MENU)
    bot.register_callback_query_handler(_guarded(app, on_refund_button),
                                        func=lambda c: (c.data or "").startswith(refunds.BUTTON_PREFIX))
    bot.register_callback_query_handler(_guarded(app, on_renewal),
                                        func=lambda c: c.data in (RENEWAL_CANCEL, RENEWAL_RESUME))
    bot.register_pre_checkout_query_handler(_guarded(app, on_pre_checkout), func=lambda q: True)
    bot.register_callback_query_handler(_guarded(app, on_check), func=lambda c: (c.data or "").startswith("check:"))
    bot.register_message_handler(_guarded(app, on_chat_migrated), content_types=["migrate_to_chat_id"],
                                 chat_types=["group"])
    bot.register_chat_join_request_handler(_guarded(app, on_join_request), func=lambda r: True)
    bot.register_my_chat_member_handler(_guarded(app, on_my_chat_member), func=lambda u: True)
