"""Refunds, by an admin (/refund) or the owner (`clubbot.py refund`): the money of one paid
payment goes back the way it came (a Crypto Pay transfer of what was paid, or Telegram's
refundStarPayment), then the time it bought is taken back (db.finish_refund).

The order keeps a crash from paying twice: the refund is claimed ('sending', committed), the
money is asked to go back, and only then is it finished. A refund killed in between is asked
again when it is run again, which is safe: a transfer's spend_id is accepted once (the second
answer is SPEND_ID_ALREADY_USED) and Telegram refunds a charge once (CHARGE_ALREADY_REFUNDED).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import texts
from admin import AdminError, member_name
from cryptopay import MAX_SPEND_ID, CryptoPayError
from runtime import App

log = logging.getLogger("clubbot.refunds")

BUTTON_PREFIX = "refund:"
CANCEL = "refund:no"  # the Cancel button's data
ALREADY_REFUNDED = "CHARGE_ALREADY_REFUNDED"
# One refund at a time in a process: two admins pressing at once ask Crypto Pay or Telegram
# once. (Another process, the command line, is kept from paying twice by the spend_id.)
_running = threading.Lock()


@dataclass(frozen=True)
class Result:
    """What a refund came to. status: "done", "already" (refunded before), "not_paid",
    "low_balance" (the app's balance is short; nothing asked), "refused" (Crypto Pay or Telegram
    said no; it may be run again), "outage" (no answer; run it again: it will not pay twice)."""

    status: str
    row: sqlite3.Row
    taken: int = 0  # seconds taken back from the member (or a gift's taker)
    removed: bool = False  # they had no time left after it, and are being removed
    error: str = ""
    advice: str = ""
    available: Decimal | None = None  # low_balance: what the app has of the asset


def spend_id(row: sqlite3.Row) -> str:
    """The transfer's spend_id: the payment's own, so that every retry names the same transfer."""
    return f"refund-{row['payment_uuid']}"[:MAX_SPEND_ID]


def find(app: App, ref: str) -> sqlite3.Row:
    """The payment an admin names (Crypto Pay invoice id, or Stars charge id), if it can be
    refunded; else AdminError with the reason."""
    ref = ref.strip().removeprefix("#")  # as /user shows it
    row = app.db.payment(ref) if ref else None
    if row is None:
        raise AdminError("refund_unknown", payment=ref[:64])
    _refundable(app, row)
    return row


def _refundable(app: App, row: sqlite3.Row) -> None:
    refund = app.db.refund_of(row["id"])
    if row["status"] == "refunded" or (refund is not None and refund["status"] == "done"):
        raise AdminError("refund_already", payment=lambda lang: payment_name(row, lang))
    if row["status"] != "paid" or not row["paid_asset"] or _amount(row) is None:
        raise AdminError("refund_not_paid", payment=lambda lang: payment_name(row, lang), status=row["status"])


def _amount(row: sqlite3.Row) -> Decimal | None:
    try:
        amount = Decimal(row["paid_amount"] or "")
    except InvalidOperation:
        return None
    return amount if amount.is_finite() and amount > 0 else None


def payment_name(row: sqlite3.Row, lang: str) -> str:
    if row["invoice_id"] is not None:
        return texts.t(lang, "refund_payment_invoice", ref=row["invoice_id"])
    return texts.t(lang, "refund_payment_stars", ref=row["charge_id"])


def refund_price(row: sqlite3.Row) -> str:
    return texts.price(_amount(row) or Decimal(0), row["paid_asset"] or row["currency"])


def _member(app: App, user_id: int | None) -> str:
    if user_id is None:
        return "?"
    member = app.db.member(user_id)
    return member_name(user_id, member["username"] if member is not None else None)


def question(app: App, row: sqlite3.Row, lang: str) -> str:
    """What the refund will do, asked before anything is sent."""
    text = texts.t(lang, "refund_confirm", price=refund_price(row), user=_member(app, row["user_id"]),
                   payment=payment_name(row, lang), plan=row["plan_id"],
                   asked=texts.price(Decimal(row["amount"]), row["currency"]),
                   date=texts.log_date(row["paid_at"] or row["created_at"]),
                   duration=texts.duration_text(row["duration"], lang))
    if row["gift"]:
        gift = app.db.bought_gift(row["id"])
        if gift is not None and gift["redeemed_by"] is not None:
            text += "\n" + texts.t(lang, "refund_confirm_gift_taken", user=_member(app, gift["redeemed_by"]))
        else:
            text += "\n" + texts.t(lang, "refund_confirm_gift")
    bonus = app.db.bonus_earned_by(row["id"])
    if bonus is not None:
        text += "\n" + texts.t(lang, "refund_confirm_bonus", user=_member(app, bonus["referrer_id"]),
                               duration=texts.duration_text(bonus["duration"], lang))
    return text


def run(app: App, row: sqlite3.Row, by: str) -> Result:
    """Refund the payment `row` now (see the module's docstring for the order of steps)."""
    with _running:
        row = app.db.invoice_by_uuid(row["payment_uuid"])  # as it is now
        try:
            _refundable(app, row)
        except AdminError as error:
            return Result("already" if error.key == "refund_already" else "not_paid", row)
        stars = row["currency_type"] == "stars"
        claim = (row["id"], "stars" if stars else "transfer", row["paid_asset"], _amount(row),
                 None if stars else spend_id(row), by)
        retry = not app.db.start_refund(*claim, app.now())  # under way already: killed after asking, maybe
        log.info("refund of %s (member %s, %s) started by %s%s", payment_name(row, "en"), row["user_id"],
                 refund_price(row), by, " again" if retry else "")
        sent = _send_stars(app, row) if stars else _send_transfer(app, row, retry)
        if isinstance(sent, Result):
            return sent
        return _finish(app, row, claim, sent)


def _send_transfer(app: App, row: sqlite3.Row, retry: bool) -> int | None | Result:
    """The Crypto Pay transfer back to the member: its id (None: made before, by this spend_id),
    or the Result when it was not made."""
    asset, amount = row["paid_asset"], _amount(row)
    try:
        if not retry:  # a retry's transfer may have gone already, and the balance with it
            available = app.cryptopay.get_balance().get(asset, Decimal(0))
            if available < amount:
                app.db.refund_refused(row["id"], f"balance: {available} {asset} available", app.now())
                log.warning("refund of invoice %s refused: the app has %s %s, %s needed", row["invoice_id"],
                            available, asset, amount)
                return Result("low_balance", row, available=available)
        transfer = app.cryptopay.transfer(row["user_id"], asset, amount, spend_id(row),
                                          comment=f"Refund: invoice {row['invoice_id']}")
    except CryptoPayError as exc:
        if exc.is_duplicate_spend:
            log.info("refund of invoice %s: the transfer was made before (spend_id used)", row["invoice_id"])
            return None
        if exc.is_refused:
            app.db.refund_refused(row["id"], exc.name, app.now())
            log.warning("refund of invoice %s refused by Crypto Pay: %s", row["invoice_id"], exc)
            return Result("refused", row, error=exc.name, advice=exc.advice or "")
        if exc.method == "getBalance":  # nothing was asked to go: it may simply be run again
            app.db.refund_refused(row["id"], f"getBalance: {exc.name}", app.now())
        log.warning("refund of invoice %s: Crypto Pay did not answer: %s", row["invoice_id"], exc)
        return Result("outage", row, error=str(exc))
    log.info("refund of invoice %s: transfer %s of %s %s to member %s", row["invoice_id"], transfer.transfer_id,
             amount, asset, row["user_id"])
    return transfer.transfer_id


def _send_stars(app: App, row: sqlite3.Row) -> None | Result:
    """Telegram's refundStarPayment: None when the Stars went back (now, or before), else the Result."""
    from tg import budgeted_call, classify

    try:
        budgeted_call(app, app.bot.refund_star_payment, row["user_id"], row["charge_id"])
    except Exception as exc:
        failure = classify(exc)
        if ALREADY_REFUNDED in failure.description:
            log.info("refund of Stars payment %s: refunded before", row["charge_id"])
            return None
        if failure.kind in ("rejected", "blocked"):
            app.db.refund_refused(row["id"], failure.description, app.now())
            log.warning("refund of Stars payment %s refused by Telegram: %s", row["charge_id"], failure.description)
            return Result("refused", row, error=failure.description)
        log.warning("refund of Stars payment %s: Telegram did not answer: %s", row["charge_id"], failure.description)
        return Result("outage", row, error=failure.description)
    log.info("refund of Stars payment %s: %s XTR back to member %s", row["charge_id"], row["paid_amount"],
             row["user_id"])
    return None


def _finish(app: App, row: sqlite3.Row, claim: tuple, transfer_id: int | None) -> Result:
    """The money went back: the refund is finished and the time taken back, once."""
    done = app.db.finish_refund(row["id"], app.now(), transfer_id)
    if done is None and app.db.refund_of(row["id"])["status"] == "failed":
        # Another process's refusal came in between (its balance read after this transfer): the
        # money went all the same, so the refund is claimed again and finished.
        app.db.start_refund(*claim, app.now())
        done = app.db.finish_refund(row["id"], app.now(), transfer_id)
    if done is None:
        return Result("already", row)
    app.wake_sender()
    if row["currency_type"] == "stars":
        _stop_renewal(app, row)
    log.info("refund of %s done: %s s taken back from %s%s", payment_name(row, "en"), done.taken, done.holder,
             ", who is being removed" if done.removed else "")
    return Result("done", row, taken=done.taken, removed=done.removed)


def _stop_renewal(app: App, row: sqlite3.Row) -> None:
    """A refunded subscription payment: its renewal is cancelled too, if it can be (best effort)."""
    from tg import budgeted_call

    subscription = app.db.subscription_of_payment(row)
    if subscription is None or subscription["canceled_at"] is not None:
        return
    try:
        budgeted_call(app, app.bot.edit_user_star_subscription, row["user_id"], subscription["charge_id"], True)
        # Recorded only once Telegram took it: otherwise it still renews, the member's own Cancel
        # still asks Telegram, and a renewal that comes is a payment like any other. (Its expiry is
        # not held for it: the refund brought the expiry before the renewal date.)
        app.db.set_star_renewal(subscription["charge_id"], True, app.now(), "refund")
        log.info("refund: the Stars renewal of member %s is cancelled", row["user_id"])
    except Exception as exc:
        log.warning("refund: the Stars renewal of member %s could not be cancelled: %s", row["user_id"], exc)


def result_text(app: App, result: Result, lang: str) -> str:
    """What an admin is told of the refund's outcome."""
    row = result.row
    payment, price = payment_name(row, lang), refund_price(row)
    if result.status == "done":
        text = texts.t(lang, "refund_done", price=price, user=_member(app, row["user_id"]), payment=payment,
                       taken=texts.duration_text(result.taken, lang) if result.taken else "0")
        return text + ("\n" + texts.t(lang, "refund_removed") if result.removed else "")
    if result.status == "already":
        return texts.t(lang, "refund_already", payment=payment)
    if result.status == "not_paid":
        return texts.t(lang, "refund_not_paid", payment=payment, status=row["status"])
    if result.status == "low_balance":
        return texts.t(lang, "refund_low_balance", price=price,
                       available=texts.price(result.available or Decimal(0), row["paid_asset"]))
    if result.status == "refused":
        return texts.t(lang, "refund_refused", payment=payment, error=result.error,
                       advice=result.advice or texts.t(lang, "refund_no_advice"))
    return texts.t(lang, "refund_outage_stars" if row["currency_type"] == "stars" else "refund_outage",
                   error=result.error)
