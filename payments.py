"""Buying, checking and polling payments: plain functions over db.py and the Crypto Pay client."""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

import codes
import texts
from config import Config, Plan
from cryptopay import CryptoPayError, UnreadableInvoice
from db import UNUSABLE_STATE, WEBHOOK_STATE, ApplyResult, CodeTaken, Outcome
from kinds import Kind
from runtime import App

log = logging.getLogger("clubbot.payments")

# An invoice is reused only while the member still has this long to pay it.
REUSE_MARGIN = 5 * 60
# A pending invoice that Crypto Pay no longer returns is given up this long after it expired.
FORGET_AFTER = 86400
# A payment the poller applied, with no webhook at all arriving this long after, means
# webhooks are not arriving.
WEBHOOK_GRACE = 120
# Without WEBHOOK_URL the poller is the only way a payment is seen, so it looks this often
# (seconds) while any invoice is pending, and a member waits seconds, not POLL_INTERVAL.
# Crypto Pay publishes no rate limit; this is one getInvoices call (up to 1000 invoices)
# every 3 s, none while nothing is pending, with backoff on any failure.
POLL_WITHOUT_WEBHOOK = 3


@dataclass(frozen=True)
class Purchase:
    invoice: sqlite3.Row | None = None  # the invoice to pay
    trial_expires_at: int | None = None  # a free plan started
    trial_refused: bool = False
    code_refused: bool = False  # the member's code no longer works for this plan: nothing was made
    code: sqlite3.Row | None = None  # the code the invoice was made with
    renewing: bool = False  # a Stars subscription of the member renews already: no second one


def note_crypto_pay(app: App, error: CryptoPayError | None) -> None:
    """Alert admins once when Crypto Pay refuses the token, and once when it takes it again."""
    if error is not None and not error.is_auth_error:
        return  # an outage says nothing about the token
    if app.db.alert_state("cryptopay_token", error is not None, app.now(), app.config.admin_ids, Kind.ADMIN_TOKEN,
                          {"error": error.name if error else ""}):
        if error is not None:
            log.error("Crypto Pay refuses CRYPTO_PAY_TOKEN (%s)", error.name)
        else:
            log.info("Crypto Pay accepts the token again")
        app.wake_sender()


def note_webhooks_missing(app: App, invoice_id: int) -> None:
    """Webhooks are not arriving (the poller's watch saw none): alert admins once per outage.
    The next webhook of ours ends the outage (db.apply_invoice clears WEBHOOK_STATE)."""
    if app.db.alert_state(WEBHOOK_STATE, True, app.now(), app.config.admin_ids, Kind.ADMIN_WEBHOOK,
                          {"invoice_id": invoice_id}, announce_recovery=False):
        log.error("webhooks are not arriving: invoice %s was applied by the poller and no webhook came "
                  "within %ss; check the webhook URL in @CryptoBot", invoice_id, WEBHOOK_GRACE)
        app.wake_sender()


def note_unusable_webhook(app: App, error: str, record_id: int) -> None:
    """A correctly signed webhook we could not use: alert admins once, until one is used again
    (db.apply_invoice clears UNUSABLE_STATE)."""
    if app.db.alert_state(UNUSABLE_STATE, True, app.now(), app.config.admin_ids,
                          Kind.ADMIN_WEBHOOK_UNUSABLE, {"error": error, "record_id": record_id},
                          announce_recovery=False):
        app.wake_sender()


def note_unreadable(app: App, item: UnreadableInvoice) -> None:
    """A pending invoice Crypto Pay returns in a form we cannot read: it may be paid, so it stays
    pending and is asked about again; admins are alerted once per invoice."""
    if item.invoice_id is None:
        return
    if app.db.invoice_unreadable(item.invoice_id, item.error, app.now(), app.config.admin_ids):
        log.error("invoice %s: Crypto Pay returns it in a form ClubBot cannot read (%s); it stays pending "
                  "and is asked about again at every poll; admins alerted", item.invoice_id, item.error)
        app.wake_sender()


class WebhookWatch:
    """The poller's memory of the payments it applied (invoice id -> when), looked at again
    WEBHOOK_GRACE later: if no webhook for any invoice has arrived since, webhooks are not
    arriving. A payment the poller finds first is not alarming in itself (it polls often);
    silence afterwards is. Kept in memory on purpose: a payment applied before this process
    started, or before webhooks worked again, says nothing about webhooks now."""

    def __init__(self) -> None:
        self.applied: dict[int, int] = {}

    def poller_applied(self, invoice_id: int, at: int) -> None:
        self.applied[invoice_id] = at

    def check(self, app: App) -> None:
        """Alert (once per outage) if a payment applied WEBHOOK_GRACE ago has seen no webhook since."""
        now = app.now()
        due = sorted((at, invoice_id) for invoice_id, at in self.applied.items() if now - at >= WEBHOOK_GRACE)
        for at, invoice_id in due:
            if not app.db.webhook_seen_since(at):
                note_webhooks_missing(app, invoice_id)
            del self.applied[invoice_id]


def poll_every(config: Config) -> int:
    """Seconds between the poller's looks: POLL_INTERVAL, or POLL_WITHOUT_WEBHOOK if shorter
    when there is no webhook."""
    if config.webhook_url:
        return config.poll_interval
    return min(config.poll_interval, POLL_WITHOUT_WEBHOOK)


def club_name(app: App) -> str:
    titles = [app.chat_titles[c] for c in app.club_chats() if c in app.chat_titles]
    return titles[0] if titles else (app.bot_username and f"@{app.bot_username}") or "the club"


def buy(app: App, user_id: int, plan: Plan, plan_title: str, gift: bool = False) -> Purchase:
    """Start a free plan, or give the member an invoice for a paid one (reusing an unexpired one);
    with `gift`, an invoice for the plan as a gift (a free plan is no gift: ValueError).

    Raises CryptoPayError when Crypto Pay cannot create the invoice.
    """
    now = app.now()
    if plan.is_trial and gift:
        raise ValueError(f"plan {plan.id} is free: it cannot be bought as a gift")
    if plan.is_trial:
        expires_at = app.db.claim_trial(user_id, plan.id, plan.duration, now)
        if expires_at is None:
            return Purchase(trial_refused=True)
        log.info("trial started: member %s, plan %s, until %s", user_id, plan.id, texts.log_date(expires_at))
        app.wake_sender()
        return Purchase(trial_expires_at=expires_at)
    _learn_username(app)
    accepted_assets = app.config.accepted_assets
    code = codes.attached(app.db, user_id, now)
    if code is not None and not codes.covers(code, plan, gift):
        code = None  # not for this plan: its price is shown without a discount
    if code is not None and not codes.usable(app.db, code, user_id, now):
        return _code_refused(app, user_id, code, plan, now)
    amount = plan.amount if code is None else codes.price_for(plan, code)
    code_id = None if code is None else code["id"]
    reusable = app.db.reusable_invoice(user_id, plan.id, plan.duration, amount, plan.currency,
                                       plan.is_fiat, accepted_assets, now + REUSE_MARGIN, code_id, gift)
    if reusable is not None:
        return Purchase(invoice=reusable, code=code)
    try:
        payment_uuid = app.db.start_invoice(user_id, plan.id, plan.duration, amount, plan.currency,
                                            plan.is_fiat, now, app.config.invoice_ttl, accepted_assets,
                                            code_id, None if code is None else plan.amount, gift)
    except CodeTaken:  # every use is held by payments or payable invoices: as if the code were used up
        held = app.db.held_invoice(user_id, plan.id, code_id, now, gift)
        if held is not None:  # by the member's own invoice, in its last minutes: still theirs to pay
            return Purchase(invoice=held, code=code)
        return _code_refused(app, user_id, code, plan, now)
    try:
        invoice = app.cryptopay.create_invoice(
            amount=amount, currency=plan.currency, fiat=plan.is_fiat, payload=payment_uuid,
            description=f"{club_name(app)}: {plan_title}" + (" (gift)" if gift else ""),
            expires_in=app.config.invoice_ttl,
            accepted_assets=accepted_assets,
            paid_btn_url=f"https://t.me/{app.bot_username}" if app.bot_username else None,
        )
    except CryptoPayError as exc:
        app.db.invoice_failed(payment_uuid)
        log.error("createInvoice failed for member %s, plan %s: %s", user_id, plan.id, exc)
        note_crypto_pay(app, exc)
        raise
    note_crypto_pay(app, None)
    if (invoice.amount, invoice.currency) != (amount, plan.currency):
        log.warning("invoice %s was created for %s %s, not %s %s as asked; payments are checked against it",
                    invoice.invoice_id, invoice.amount, invoice.currency, amount, plan.currency)
    app.db.invoice_created(payment_uuid, invoice.invoice_id, invoice.pay_url, invoice.amount)
    log.info("invoice %s created: member %s, plan %s%s, %s %s%s", invoice.invoice_id, user_id, plan.id,
             " as a gift" if gift else "", amount, plan.currency,
             f" (code {code['name']})" if code is not None else "")
    return Purchase(invoice=app.db.invoice_by_uuid(payment_uuid), code=code)


def _learn_username(app: App) -> None:
    """The bot's username, for the invoice's return button, if getMe failed at start."""
    if app.bot_username is None and app.bot is not None:
        from tg import Stopping, learn_bot  # here: the webhook server, a user of this module, needs no telebot

        try:
            learn_bot(app)
        except (Exception, Stopping):
            log.warning("getMe failed; the invoice gets no button back to the bot")


def _code_refused(app: App, user_id: int, code, plan: Plan, now: int) -> Purchase:
    """The member's code no longer works for this plan: it is detached, and nothing is made."""
    app.db.attach_code(user_id, None, None, now, "bot")
    app.db.audit(now, user_id, "code_refused", "bot", detail={"code": code["name"], "plan": plan.id})
    return Purchase(code_refused=True)


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
        batch = app.cryptopay.fetch_invoices([row["invoice_id"]])
    except CryptoPayError as exc:
        log.warning("check payment: getInvoices failed: %s", exc)
        note_crypto_pay(app, exc)
        return "check_failed"
    note_crypto_pay(app, None)
    unreadable = next((i for i in batch.unreadable if i.invoice_id == row["invoice_id"]), None)
    if unreadable is not None:
        # Not "can't find it, get a new one": it may be paid, and the member must not pay twice.
        note_unreadable(app, unreadable)
        return "check_failed"
    invoice = next((i for i in batch.found if i.invoice_id == row["invoice_id"]), None)
    if invoice is None:
        return "check_expired" if row["status"] != "pending" else "check_unknown"
    if invoice.status == "paid":
        result = app.db.apply_invoice(invoice, "button", app.now(), app.config.admin_ids, app.config.referral_bonus)
        log_applied(result, invoice.invoice_id, "button")
        app.wake_sender()
        return "check_mismatch" if result.outcome is Outcome.MISMATCH else "check_paid"
    if invoice.status == "expired":
        app.db.expire_invoices([invoice.invoice_id], "button", app.now())
        return "check_expired"
    return "check_waiting" if row["status"] == "pending" else "check_expired"


def poll_once(app: App, watch: WebhookWatch | None = None) -> int:
    """Ask Crypto Pay about every pending invoice of ours; apply the paid, mark the expired.

    An invoice returned in a form we cannot read stays pending (admins are told once) and is
    asked about again next time. The payments applied are handed to `watch`, if given and
    WEBHOOK_URL is set. Returns the number of getInvoices calls made (none when nothing is
    pending). Raises CryptoPayError when Crypto Pay fails.
    """
    pending = app.db.pending_invoice_ids()
    if not pending:
        return 0
    try:
        batch = app.cryptopay.fetch_invoices(pending)
    except CryptoPayError as exc:
        note_crypto_pay(app, exc)
        raise
    note_crypto_pay(app, None)
    calls = -(-len(pending) // 1000)
    now = app.now()
    expired: list[int] = []
    seen: set[int] = set()
    # An unreadable item that names no invoice could be any of them: none is "missing" this round.
    blind = any(item.invoice_id is None for item in batch.unreadable)
    for item in batch.unreadable:
        if item.invoice_id is not None:
            seen.add(item.invoice_id)
            try:
                note_unreadable(app, item)
            except Exception:  # the alert waits for the next poll; the rest goes on
                log.exception("poller: recording unreadable invoice %s failed", item.invoice_id)
    for invoice in batch.found:
        seen.add(invoice.invoice_id)
        if invoice.status == "paid":
            try:
                result = app.db.apply_invoice(invoice, "poller", now, app.config.admin_ids,
                                              app.config.referral_bonus)
            except Exception:  # one bad row must not stop the rest
                log.exception("poller: applying invoice %s failed", invoice.invoice_id)
                continue
            if result.outcome is Outcome.APPLIED and app.config.webhook_url:
                log.info("poller: invoice %s was paid before its webhook arrived", invoice.invoice_id)
                if watch is not None:
                    watch.poller_applied(invoice.invoice_id, now)
            log_applied(result, invoice.invoice_id, "poller")
        elif invoice.status == "expired":
            expired.append(invoice.invoice_id)
    missing = [] if blind else [i for i in pending if i not in seen]
    if missing:
        expired.extend(app.db.stale_invoice_ids(missing, now - FORGET_AFTER))
    if expired:
        count = app.db.expire_invoices(expired, "poller", now)
        log.info("poller: %d invoice(s) expired", count)
    app.wake_sender()
    return calls


def log_applied(result: ApplyResult, invoice_id: int, cause: str, arrival: str = "",
                to: logging.Logger = log) -> None:
    """One line for what a payment did; `arrival` (the webhook's own part) begins the same line."""
    outcome, user_id, expires_at = result.outcome, result.user_id, result.expires_at
    if outcome is Outcome.APPLIED and result.gift is not None:
        to.info("%spayment processed: invoice %s by %s; gift link %s made for member %s", arrival, invoice_id,
                cause, result.gift, user_id)
    elif outcome is Outcome.APPLIED:
        to.info("%spayment processed: invoice %s by %s; subscription activated: member %s until %s",
                arrival, invoice_id, cause, user_id, texts.log_date(expires_at))
    elif outcome is Outcome.DUPLICATE:
        to.info("%spayment already applied: invoice %s (%s)", arrival, invoice_id, cause)
    elif outcome is Outcome.MISMATCH:
        to.warning("%spayment mismatch: invoice %s of member %s (%s); no access given", arrival, invoice_id,
                   user_id, cause)
    elif outcome is Outcome.NOT_OURS:
        to.warning("%sinvoice %s is not one this database created (%s); ignored", arrival, invoice_id, cause)
