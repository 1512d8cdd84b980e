"""Telegram Stars: plans priced in XTR, paid in the bot. An invoice link per purchase (a 30-day
plan's renews every month until cancelled), the pre-checkout answer, the payment applied once by
its charge id, missed payments caught up from getStarTransactions, and the member's renewal
cancelled or resumed. Plain functions over db.py and the bot, as payments.py is for Crypto Pay."""
from __future__ import annotations

import logging
from decimal import Decimal

from telebot import types

from config import STARS, STARS_PERIOD, Plan
from db import ApplyResult, Outcome, StarPayment
from payments import REUSE_MARGIN, Purchase, club_name, log_applied
from runtime import App
from tg import budgeted_call

log = logging.getLogger("clubbot.stars")

# How often missed Stars payments are looked for (and at start).
RECONCILE_EVERY = 600
PAGE = 100  # getStarTransactions' largest page
OFFSET_STATE = "stars_offset"  # how many of the bot's transactions were looked at


class StarsUnavailable(Exception):
    """Telegram did not make the invoice link."""


def buy(app: App, user_id: int, plan: Plan, plan_title: str, gift: bool = False) -> Purchase:
    """An invoice link for a Stars plan (reusing the member's own unexpired one for the same
    terms). A member whose renewing subscription is running is not sold a second one.
    Raises StarsUnavailable when Telegram does not make the link."""
    now = app.now()
    if plan.renews and not gift and app.db.renewing_subscription(user_id, now) is not None:
        return Purchase(renewing=True)
    reusable = app.db.reusable_invoice(user_id, plan.id, plan.duration, plan.amount, STARS, False, (),
                                       now + REUSE_MARGIN, None, gift)
    if reusable is not None:
        return Purchase(invoice=reusable)
    payment_uuid = app.db.start_invoice(user_id, plan.id, plan.duration, plan.amount, STARS, False, now,
                                        app.config.invoice_ttl, gift=gift)
    try:
        link = budgeted_call(
            app, app.bot.create_invoice_link, title=plan_title[:32],
            description=f"{club_name(app)}: {plan_title}" + (" (gift)" if gift else ""),
            payload=payment_uuid, provider_token="", currency=STARS,
            prices=[types.LabeledPrice(plan_title[:32], int(plan.amount))],
            subscription_period=STARS_PERIOD if plan.renews and not gift else None)
    except Exception as exc:
        app.db.invoice_failed(payment_uuid)
        log.error("createInvoiceLink failed for member %s, plan %s: %s", user_id, plan.id, exc)
        raise StarsUnavailable(str(exc)) from exc
    app.db.invoice_created(payment_uuid, None, link)
    log.info("Stars invoice made: member %s, plan %s%s, %s XTR", user_id, plan.id, " as a gift" if gift else "",
             plan.amount)
    return Purchase(invoice=app.db.invoice_by_uuid(payment_uuid))


def checkout(app: App, user_id: int, payload: str, currency: str, total: int) -> str | None:
    """The pre-checkout answer: None to take the payment, else the text key of why not. Taken
    only for the member's own unpaid invoice whose plan is still sold at the same price."""
    row = app.db.invoice_by_uuid(payload)
    if row is None or row["currency_type"] != "stars":
        return "stars_unknown"
    if row["user_id"] != user_id:
        return "stars_not_yours"
    if row["status"] == "expired" or (row["status"] == "pending" and row["expires_at"] <= app.now()):
        return "check_expired"
    if row["status"] != "pending":
        return "stars_paid_already"
    plan = app.config.plan(row["plan_id"])
    same = (plan is not None and plan.is_stars and plan.amount == Decimal(row["amount"])
            and plan.duration == row["duration"] and currency == STARS and total == int(row["amount"]))
    return None if same else "stars_plan_changed"


def apply(app: App, paid: StarPayment, cause: str) -> ApplyResult:
    """Apply a Stars payment (once, whoever reports it) and log it."""
    result = app.db.apply_star_payment(paid, cause, app.now(), app.config.admin_ids, app.config.referral_bonus)
    if result.outcome is Outcome.NOT_OURS:
        log.warning("Stars payment %s of member %s names no invoice of this database; ignored",
                    paid.charge_id, paid.user_id)
    else:
        log_applied(result, paid.charge_id, cause)
    if result.outcome in (Outcome.APPLIED, Outcome.MISMATCH):
        app.wake_sender()
    return result


def from_successful_payment(user_id: int, payment: types.SuccessfulPayment) -> StarPayment:
    return StarPayment(user_id=user_id, payload=payment.invoice_payload, charge_id=payment.telegram_payment_charge_id,
                       amount=payment.total_amount, currency=payment.currency,
                       renews_at=payment.subscription_expiration_date,
                       first_recurring=bool(payment.is_first_recurring))


def reconcile(app: App) -> int:
    """Look through the bot's Star transactions not looked at yet (oldest first, as Telegram
    lists them) and apply the payments of ours that were missed: the bot was down longer than
    Telegram keeps updates, say. The number applied. Raises as getStarTransactions does."""
    offset = int(app.db.states(OFFSET_STATE).get(OFFSET_STATE, "0"))
    applied = 0
    while not app.stop.is_set():
        page = budgeted_call(app, app.bot.get_star_transactions, offset=offset, limit=PAGE).transactions
        for transaction in page:
            paid = _payment_of(transaction)
            if paid is not None and apply(app, paid, "reconcile").outcome is Outcome.APPLIED:
                applied += 1
                log.info("Stars payment %s of member %s was missed, and caught up from getStarTransactions",
                         paid.charge_id, paid.user_id)
        offset += len(page)
        app.db.put_state(OFFSET_STATE, str(offset))  # after applying: a kill between applies nothing twice
        if len(page) < PAGE:
            break
    return applied


def _payment_of(transaction: types.StarTransaction) -> StarPayment | None:
    """A member's payment to the bot for an invoice (not a refund, nor anything else)."""
    source = transaction.source
    if source is None or getattr(source, "type", None) != "user" or not getattr(source, "invoice_payload", None):
        return None
    period = getattr(source, "subscription_period", None)
    return StarPayment(user_id=source.user.id, payload=source.invoice_payload, charge_id=transaction.id,
                       amount=transaction.amount, renews_at=transaction.date + period if period else None)


def set_renewal(app: App, user_id: int, cancel: bool) -> str:
    """The member cancels (or resumes) their Stars subscription's renewal; the text key of the answer."""
    subscription = app.db.star_subscription(user_id)
    if subscription is None or subscription["renews_at"] <= app.now():
        return "renewal_none"
    if (subscription["canceled_at"] is not None) == cancel:
        return "renewal_canceled" if cancel else "renewal_resumed"  # as asked already
    try:
        budgeted_call(app, app.bot.edit_user_star_subscription, user_id, subscription["charge_id"], cancel)
    except Exception as exc:
        log.warning("editUserStarSubscription failed for member %s: %s", user_id, exc)
        return "renewal_failed"
    app.db.set_star_renewal(subscription["charge_id"], cancel, app.now(), "member")
    log.info("member %s %s their Stars renewal", user_id, "cancelled" if cancel else "resumed")
    return "renewal_canceled" if cancel else "renewal_resumed"
