"""Buying, checking and polling payments: plain functions over db.py and the Crypto Pay client."""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from config import Plan
from cryptopay import CryptoPayError
from db import Outcome
from runtime import App

log = logging.getLogger("clubbot.payments")

# An invoice is reused only while the member still has this long to pay it.
REUSE_MARGIN = 5 * 60
# A pending invoice that Crypto Pay no longer returns is given up this long after it expired.
FORGET_AFTER = 86400
# A payment the poller finds this long after it was made means its webhook is not coming.
WEBHOOK_GRACE = 120


@dataclass(frozen=True)
class Purchase:
    invoice: sqlite3.Row | None = None  # the invoice to pay
    trial_expires_at: int | None = None  # a free plan started
    trial_refused: bool = False


def note_crypto_pay(app: App, error: CryptoPayError | None) -> None:
    """Alert admins once when Crypto Pay refuses the token, and once when it takes it again."""
    if error is not None and not error.is_auth_error:
        return  # an outage says nothing about the token
    if app.db.alert_state("cryptopay_token", error is not None, app.now(), app.config.admin_ids, "admin_token",
                          {"error": error.name if error else ""}):
        if error is not None:
            log.error("Crypto Pay refuses CRYPTO_PAY_TOKEN (%s)", error.name)
        else:
            log.info("Crypto Pay accepts the token again")
        app.wake_sender()


def note_webhook(app: App, arrived: bool, invoice_id: int) -> None:
    """A payment the poller found first means webhooks are not arriving: alert admins once,
    until a webhook arrives again."""
    if app.db.alert_state("webhook", not arrived, app.now(), app.config.admin_ids, "admin_webhook",
                          {"invoice_id": invoice_id}, announce_recovery=False):
        app.wake_sender()


def club_name(app: App) -> str:
    titles = [app.chat_titles[c] for c in app.config.club_chat_ids if c in app.chat_titles]
    return titles[0] if titles else (app.bot_username and f"@{app.bot_username}") or "the club"


def buy(app: App, user_id: int, plan: Plan, plan_title: str) -> Purchase:
    """Start a free plan, or give the member an invoice for a paid one (reusing an unexpired one).

    Raises CryptoPayError when Crypto Pay cannot create the invoice.
    """
    now = app.now()
    if plan.is_trial:
        expires_at = app.db.claim_trial(user_id, plan.id, plan.duration, now)
        if expires_at is None:
            return Purchase(trial_refused=True)
        log.info("trial started: member %s, plan %s, until %s", user_id, plan.id, expires_at)
        app.wake_sender()
        return Purchase(trial_expires_at=expires_at)
    if app.bot_username is None and app.bot is not None:
        try:  # for the invoice's return button; getMe failed at start
            app.bot_username = app.bot.get_me().username
        except Exception:
            log.warning("getMe failed; the invoice gets no button back to the bot")
    reusable = app.db.reusable_invoice(user_id, plan.id, plan.amount, plan.currency, now + REUSE_MARGIN)
    if reusable is not None:
        return Purchase(invoice=reusable)
    payment_uuid = app.db.start_invoice(user_id, plan.id, plan.duration, plan.amount, plan.currency,
                                        plan.is_fiat, now, app.config.invoice_ttl)
    try:
        invoice = app.cryptopay.create_invoice(
            amount=plan.amount, currency=plan.currency, fiat=plan.is_fiat, payload=payment_uuid,
            description=f"{club_name(app)}: {plan_title}", expires_in=app.config.invoice_ttl,
            accepted_assets=app.config.accepted_assets,
            paid_btn_url=f"https://t.me/{app.bot_username}" if app.bot_username else None,
        )
    except CryptoPayError as exc:
        app.db.invoice_failed(payment_uuid)
        log.error("createInvoice failed for member %s, plan %s: %s", user_id, plan.id, exc)
        note_crypto_pay(app, exc)
        raise
    note_crypto_pay(app, None)
    if (invoice.amount, invoice.currency) != (plan.amount, plan.currency):
        log.warning("invoice %s was created for %s %s, not %s %s as asked; payments are checked against it",
                    invoice.invoice_id, invoice.amount, invoice.currency, plan.amount, plan.currency)
    app.db.invoice_created(payment_uuid, invoice.invoice_id, invoice.pay_url, invoice.amount)
    log.info("invoice %s created: member %s, plan %s, %s %s", invoice.invoice_id, user_id, plan.id,
             plan.amount, plan.currency)
    return Purchase(invoice=app.db.invoice_by_uuid(payment_uuid))


def check(app: App, payment_uuid: str, user_id: int) -> str:
    """Ask Crypto Pay about one of the member's invoices now; the text key of the answer."""
    row = app.db.invoice_by_uuid(payment_uuid)
    if row is None or row["user_id"] != user_id or row["invoice_id"] is None:
        return "check_unknown"
    if row["status"] == "paid":
        return "check_paid"
    if row["status"] == "mismatch":
        return "check_mismatch"
    try:
        found = app.cryptopay.get_invoices([row["invoice_id"]])
    except CryptoPayError as exc:
        log.warning("check payment: getInvoices failed: %s", exc)
        note_crypto_pay(app, exc)
        return "check_failed"
    note_crypto_pay(app, None)
    invoice = next((i for i in found if i.invoice_id == row["invoice_id"]), None)
    if invoice is None:
        return "check_expired" if row["status"] != "pending" else "check_unknown"
    if invoice.status == "paid":
        result = app.db.apply_invoice(invoice, "button", app.now(), app.config.admin_ids)
        log_applied(result.outcome, invoice.invoice_id, "button", result.user_id, result.expires_at)
        app.wake_sender()
        return "check_mismatch" if result.outcome is Outcome.MISMATCH else "check_paid"
    if invoice.status == "expired":
        app.db.expire_invoices([invoice.invoice_id], "button", app.now())
        return "check_expired"
    return "check_waiting" if row["status"] == "pending" else "check_expired"


def poll_once(app: App) -> int:
    """Ask Crypto Pay about every pending invoice of ours; apply the paid, mark the expired.

    Returns the number of getInvoices calls made (none when nothing is pending).
    Raises CryptoPayError when Crypto Pay fails.
    """
    pending = app.db.pending_invoice_ids()
    if not pending:
        return 0
    try:
        invoices = app.cryptopay.get_invoices(pending)
    except CryptoPayError as exc:
        note_crypto_pay(app, exc)
        raise
    note_crypto_pay(app, None)
    calls = -(-len(pending) // 1000)
    now = app.now()
    expired: list[int] = []
    seen: set[int] = set()
    for invoice in invoices:
        seen.add(invoice.invoice_id)
        if invoice.status == "paid":
            try:
                result = app.db.apply_invoice(invoice, "poller", now, app.config.admin_ids)
            except Exception:  # one bad row must not stop the rest
                log.exception("poller: applying invoice %s failed", invoice.invoice_id)
                continue
            if result.outcome is Outcome.APPLIED:
                log.warning("poller: invoice %s was paid but its webhook has not arrived", invoice.invoice_id)
                # A webhook may still be on its way for a payment of a moment ago.
                if invoice.paid_at is None or now - invoice.paid_at > WEBHOOK_GRACE:
                    note_webhook(app, False, invoice.invoice_id)
            log_applied(result.outcome, invoice.invoice_id, "poller", result.user_id, result.expires_at)
        elif invoice.status == "expired":
            expired.append(invoice.invoice_id)
    missing = [i for i in pending if i not in seen]
    if missing:
        expired.extend(app.db.stale_invoice_ids(missing, now - FORGET_AFTER))
    if expired:
        count = app.db.expire_invoices(expired, "poller", now)
        log.info("poller: %d invoice(s) expired", count)
    app.wake_sender()
    return calls


def log_applied(outcome: Outcome, invoice_id: int, cause: str, user_id: int | None,
                expires_at: int | None) -> None:
    if outcome is Outcome.APPLIED:
        log.info("payment processed: invoice %s by %s; subscription activated: member %s until %s",
                 invoice_id, cause, user_id, expires_at)
    elif outcome is Outcome.DUPLICATE:
        log.info("payment already applied: invoice %s (%s)", invoice_id, cause)
    elif outcome is Outcome.MISMATCH:
        log.warning("payment mismatch: invoice %s of member %s (%s); no access given", invoice_id, user_id, cause)
    elif outcome is Outcome.NOT_OURS:
        log.warning("invoice %s is not one this database created (%s); ignored", invoice_id, cause)
