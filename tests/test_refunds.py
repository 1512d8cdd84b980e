"""Refunds (refunds.py): the admins' /refund asks first, with what it will do, and refunds on the
button; `clubbot.py refund` asks on the terminal. The money goes back the way it came (a Crypto
Pay transfer, or refundStarPayment), once, however often it is run or wherever it was killed;
then the time the payment bought is taken back, from whoever has it."""
import re
from decimal import Decimal

import pytest
from builders import apply, buttons, command, member_with_time, paid, pending_invoice, press, stars_paid
from conftest import ADMIN, START
from test_admin import run_cli
from test_gift_purchases import buy_gift

from kinds import Kind
from outbox import Sender

DAY = 86400
MONTH = 30 * DAY


class Killed(BaseException):
    """The process dies here (as SIGKILL would: no `except Exception` catches it)."""


@pytest.fixture
def app(make_app):
    return make_app(PLANS="month:30d:5:USDT,stars:30d:250:XTR", REFERRAL_BONUS="7d")


def ask(bot, telegram, ref) -> dict:
    """An admin sends /refund REF: the question (the params of its sendMessage)."""
    command(bot, f"/refund {ref}", user_id=ADMIN)
    return telegram.messages_to(ADMIN)[-1]


def confirm(bot, telegram, question: dict) -> str:
    """The admin presses the question's Refund button: what the question became."""
    press(bot, buttons(question)[0]["callback_data"], user_id=ADMIN)
    return telegram.called("editMessageText")[-1]["text"]


def invoice_of(app, user_id: int = 501):
    return app.db.member_invoices(user_id)[0]


def refund_row(app, invoice):
    return app.db.refund_of(invoice["id"])


def kinds_to(app, chat_id: int) -> list[str]:
    return [row[0] for row in app.db.connect().execute("SELECT kind FROM outbox WHERE chat_id = ?", (chat_id,))]


def die_once_before_finishing(app, monkeypatch) -> None:
    finish = app.db.finish_refund
    calls = []

    def dying(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise Killed()
        return finish(*args, **kwargs)
    monkeypatch.setattr(app.db, "finish_refund", dying)


# --- Crypto Pay ---

def test_a_crypto_refund_asks_first_then_transfers_once_and_takes_the_time_back(bot, app, telegram, cryptopay):
    member_with_time(app, 501, days=10)
    paid(app, cryptopay)
    invoice = invoice_of(app)
    question = ask(bot, telegram, invoice["invoice_id"])
    assert question["text"].startswith(f"Refund 5 USDT to @m501 (id 501) for invoice {invoice['invoice_id']} "
                                       f"(plan month, 5 USDT, paid 2027-01-15 08:00 UTC)? It takes back up to 30 days")
    assert buttons(question) == [{"text": "Refund 5 USDT", "callback_data": f"refund:{invoice['payment_uuid']}"},
                                 {"text": "Cancel", "callback_data": "refund:no"}]
    assert cryptopay.called("transfer") == [] and refund_row(app, invoice) is None  # nothing before the button
    outcome = confirm(bot, telegram, question)
    assert outcome.startswith(f"Refunded 5 USDT to @m501 (id 501) for invoice {invoice['invoice_id']}. "
                              f"Time taken back: 30 days.")
    assert "removed" not in outcome
    [transfer] = cryptopay.called("transfer")
    assert (transfer["user_id"], transfer["asset"], transfer["amount"]) == (501, "USDT", "5")
    assert transfer["spend_id"] == f"refund-{invoice['payment_uuid']}"
    assert cryptopay.balances["USDT"] == Decimal("995")
    assert invoice_of(app)["status"] == "refunded"
    assert refund_row(app, invoice)["status"] == "done" and refund_row(app, invoice)["transfer_id"] == 5001
    assert app.db.expires_at(501) == START + 10 * DAY  # the rest is kept
    Sender(app).run_once()
    assert telegram.messages_to(501)[-1]["text"].startswith("Your payment of 5 USDT was refunded. Your membership "
                                                            "is active until")
    assert confirm(bot, telegram, question).startswith("The invoice")  # pressed again
    assert "already refunded" in telegram.called("editMessageText")[-1]["text"]
    assert len(cryptopay.called("transfer")) == 1
    assert "already refunded" in ask(bot, telegram, invoice["invoice_id"])["text"]


def test_a_member_whose_time_came_only_from_the_payment_is_removed(bot, app, telegram, cryptopay):
    paid(app, cryptopay, user_id=502)
    outcome = confirm(bot, telegram, ask(bot, telegram, invoice_of(app, 502)["invoice_id"]))
    assert "Time taken back: 30 days" in outcome and "being removed from the club" in outcome
    assert app.db.expires_at(502) <= app.now()
    assert Kind.EXPIRE.value in kinds_to(app, 502) and Kind.REFUNDED.value in kinds_to(app, 502)


def test_a_refund_killed_after_the_transfer_pays_once_when_run_again(bot, app, telegram, cryptopay, monkeypatch):
    paid(app, cryptopay)
    invoice = invoice_of(app)
    question = ask(bot, telegram, invoice["invoice_id"])
    die_once_before_finishing(app, monkeypatch)
    with pytest.raises(Killed):
        press(bot, buttons(question)[0]["callback_data"], user_id=ADMIN)
    assert len(cryptopay.transfers) == 1 and refund_row(app, invoice)["status"] == "sending"
    assert invoice_of(app)["status"] == "paid"
    assert confirm(bot, telegram, question).startswith("Refunded 5 USDT")
    assert [t["spend_id"] for t in cryptopay.called("transfer")] == [f"refund-{invoice['payment_uuid']}"] * 2
    assert len(cryptopay.transfers) == 1 and cryptopay.balances["USDT"] == Decimal("995")
    assert len(cryptopay.called("getBalance")) == 1  # a retry's balance may be short by its own transfer
    assert invoice_of(app)["status"] == "refunded" and app.db.expires_at(501) <= app.now()


def test_a_refund_crypto_pay_refuses_takes_nothing_back_and_works_once_fixed(bot, app, telegram, cryptopay):
    paid(app, cryptopay)
    invoice = invoice_of(app)
    question = ask(bot, telegram, invoice["invoice_id"])
    cryptopay.transfers_enabled = False
    outcome = confirm(bot, telegram, question)
    assert outcome.startswith(f"Not refunded: the invoice {invoice['invoice_id']} was refused (METHOD_DISABLED).")
    assert "enable transfers" in outcome and "Nothing was taken back" in outcome
    assert refund_row(app, invoice)["status"] == "failed" and refund_row(app, invoice)["error"] == "METHOD_DISABLED"
    assert invoice_of(app)["status"] == "paid" and app.db.expires_at(501) == START + MONTH
    cryptopay.transfers_enabled = True
    cryptopay.balances["USDT"] = Decimal("1")
    transfers = len(cryptopay.called("transfer"))
    outcome = confirm(bot, telegram, question)
    assert outcome.startswith("Not refunded: the app's balance has 1 USDT, less than 5 USDT. Top up the app")
    assert len(cryptopay.called("transfer")) == transfers  # caught by getBalance: no transfer asked
    assert refund_row(app, invoice)["status"] == "failed" and app.db.expires_at(501) == START + MONTH
    cryptopay.balances["USDT"] = Decimal("100")
    assert confirm(bot, telegram, question).startswith("Refunded 5 USDT")
    assert cryptopay.balances["USDT"] == Decimal("95") and invoice_of(app)["status"] == "refunded"


def test_a_refund_crypto_pay_does_not_answer_stays_to_run_again(bot, app, telegram, cryptopay):
    paid(app, cryptopay)
    invoice = invoice_of(app)
    question = ask(bot, telegram, invoice["invoice_id"])
    cryptopay.fail("transfer", (502, {"ok": False, "error": {"code": 502, "name": "BAD_GATEWAY"}}))
    outcome = confirm(bot, telegram, question)
    assert "Crypto Pay did not answer" in outcome and "it will not pay twice" in outcome
    assert refund_row(app, invoice)["status"] == "sending" and invoice_of(app)["status"] == "paid"
    assert confirm(bot, telegram, question).startswith("Refunded 5 USDT")
    assert len(cryptopay.transfers) == 1


# --- Telegram Stars ---

def test_a_stars_refund_goes_back_by_telegram_and_cancels_the_renewal(bot, app, telegram, cryptopay):
    charge = stars_paid(bot, telegram, app)["telegram_payment_charge_id"]
    assert app.db.expires_at(501) == START + MONTH
    question = ask(bot, telegram, charge)
    assert question["text"].startswith(f"Refund 250 ⭐ to 501 for Stars payment {charge} (plan stars")
    outcome = confirm(bot, telegram, question)
    assert outcome.startswith(f"Refunded 250 ⭐ to 501 for Stars payment {charge}. Time taken back: 30 days")
    assert charge in telegram.refunded and cryptopay.called("transfer") == []
    [edit] = telegram.called("editUserStarSubscription")
    assert edit["telegram_payment_charge_id"] == charge and str(edit["is_canceled"]).lower() == "true"
    assert app.db.star_subscription(501)["canceled_at"] is not None
    assert app.db.payment(charge)["status"] == "refunded" and app.db.expires_at(501) <= app.now()


def test_a_stars_refund_killed_after_telegram_refunded_finishes_when_run_again(bot, app, telegram, monkeypatch):
    charge = stars_paid(bot, telegram, app)["telegram_payment_charge_id"]
    question = ask(bot, telegram, charge)
    die_once_before_finishing(app, monkeypatch)
    with pytest.raises(Killed):
        press(bot, buttons(question)[0]["callback_data"], user_id=ADMIN)
    assert charge in telegram.refunded and app.db.payment(charge)["status"] == "paid"
    assert confirm(bot, telegram, question).startswith("Refunded 250 ⭐")  # CHARGE_ALREADY_REFUNDED: done before
    assert len(telegram.called("refundStarPayment")) == 2 and app.db.payment(charge)["status"] == "refunded"


# --- what else a payment gave ---

def test_refunding_a_referred_members_first_payment_takes_the_referrers_bonus_back(bot, app, telegram, cryptopay):
    member_with_time(app, 501, days=10)
    assert app.db.attribute_referral(502, app.db.member_ref(501), app.now()) == "referred"
    paid(app, cryptopay, user_id=502)
    assert app.db.expires_at(501) == START + 17 * DAY
    question = ask(bot, telegram, invoice_of(app, 502)["invoice_id"])
    assert "The referral bonus it earned @m501 (id 501) (7 days) is taken back too." in question["text"]
    confirm(bot, telegram, question)
    assert app.db.expires_at(501) == START + 10 * DAY
    assert app.db.referral_earnings(501) == (0, 0)


def test_refunding_a_gift_stops_its_link_or_takes_the_time_from_whoever_took_it(bot, app, telegram, cryptopay):
    apply(app, buy_gift(bot, app, cryptopay))
    apply(app, buy_gift(bot, app, cryptopay))
    Sender(app).run_once()
    first, second = the_links(telegram)
    command(bot, f"/start g-{second}", user_id=503)
    assert app.db.expires_at(503) == app.now() + MONTH
    [taken, waiting] = sorted((r for r in app.db.member_invoices(501) if r["gift"]),
                              key=lambda r: r["id"], reverse=True)
    question = ask(bot, telegram, waiting["invoice_id"])
    assert "It was a gift not taken yet: its link stops working." in question["text"]
    assert confirm(bot, telegram, question).startswith("Refunded 5 USDT to @m501 (id 501)")
    command(bot, f"/start g-{first}", user_id=502)
    assert app.db.expires_at(502) is None
    question = ask(bot, telegram, taken["invoice_id"])
    assert "It was a gift, taken by @m503 (id 503): the time is taken back from them." in question["text"]
    assert "being removed" in confirm(bot, telegram, question)
    assert app.db.expires_at(503) <= app.now() and app.db.expires_at(501) is None


def the_links(telegram) -> list[str]:
    return re.findall(r"start=g-([A-Za-z0-9]{43})", "\n".join(m["text"] for m in telegram.messages_to(501)))


# --- who may, and the command line ---

def test_only_an_admins_confirmation_refunds_and_cancel_changes_nothing(bot, app, telegram, cryptopay):
    paid(app, cryptopay)
    invoice = invoice_of(app)
    command(bot, f"/refund {invoice['invoice_id']}", user_id=501)
    assert telegram.messages_to(501)[-1]["text"].startswith("I don't know that command")
    press(bot, f"refund:{invoice['payment_uuid']}", user_id=501)  # a forged button
    assert telegram.called("answerCallbackQuery")[-1]["text"] == "Only the club's admins can refund."
    question = ask(bot, telegram, invoice["invoice_id"])
    press(bot, buttons(question)[1]["callback_data"], user_id=ADMIN)
    assert telegram.called("editMessageText")[-1]["text"] == "Cancelled: nothing was refunded."
    assert cryptopay.called("transfer") == [] and cryptopay.called("getBalance") == []
    assert refund_row(app, invoice) is None and invoice_of(app)["status"] == "paid"


def test_user_shows_each_payments_reference_and_refund_names_what_is_wrong(bot, app, telegram, cryptopay):
    paid(app, cryptopay)
    ref = invoice_of(app)["invoice_id"]
    command(bot, "/user 501", user_id=ADMIN)
    assert f"#{ref} month 5 USDT: paid (webhook)" in telegram.messages_to(ADMIN)[-1]["text"]
    assert ask(bot, telegram, f"#{ref}")["text"].startswith("Refund 5 USDT")
    assert ask(bot, telegram, "424242")["text"].startswith("There is no payment 424242")
    assert ask(bot, telegram, "")["text"].startswith("Usage: /refund PAYMENT")
    pending = pending_invoice(app, 502)
    assert ask(bot, telegram, pending["invoice_id"])["text"] == (
        f"The invoice {pending['invoice_id']} is pending, not paid: only a paid payment can be refunded. "
        f"Nothing was changed.")


def refund_cli(env, tmp_path, *args):
    """`python clubbot.py refund ...` with no terminal."""
    return run_cli(env, tmp_path, "refund", *args)


def test_the_command_line_refunds_with_yes_and_refuses_what_it_should(app, env, tmp_path, cryptopay):
    paid(app, cryptopay)
    ref = str(invoice_of(app)["invoice_id"])
    pending = str(pending_invoice(app, 502)["invoice_id"])
    code, out, err = refund_cli(env, tmp_path, ref)
    assert code == 1 and "No terminal to confirm on: nothing was refunded; add --yes" in err
    assert err.startswith(f"error: Refund 5 USDT to @m501 (id 501) for invoice {ref}")
    assert cryptopay.called("transfer") == []
    code, out, err = refund_cli(env, tmp_path, "999999", "--yes")
    assert (code, out) == (1, "") and err.startswith("error: There is no payment 999999")
    code, out, err = refund_cli(env, tmp_path, pending, "--yes")
    assert code == 1 and f"error: The invoice {pending} is pending, not paid" in err
    code, out, err = refund_cli(env, tmp_path, ref, "--yes")
    assert code == 0, err
    assert out.startswith(f"Refunded 5 USDT to @m501 (id 501) for invoice {ref}.") and "running bot" in out
    assert len(cryptopay.transfers) == 1 and invoice_of(app)["status"] == "refunded"
    assert app.db.refund_of(invoice_of(app)["id"])["by"] == "cli"
    code, out, err = refund_cli(env, tmp_path, ref, "--yes")
    assert code == 1 and "already refunded" in err and len(cryptopay.transfers) == 1


# --- found in review ---

def test_a_stars_refund_whose_renewal_cancel_telegram_refuses_still_lets_the_expiry_come(
        bot, app, telegram, clock):
    from workers import Sweeper

    member_with_time(app, 501, days=5)
    stars_paid(bot, telegram, app)  # 5 + 30 days
    telegram.fail("editUserStarSubscription", (400, {"ok": False, "error_code": 400, "description": "Bad Request"}))
    charge = app.db.star_subscription(501)["charge_id"]
    assert confirm(bot, telegram, ask(bot, telegram, charge)).startswith("Refunded 250 ⭐")
    assert app.db.expires_at(501) == START + 5 * DAY  # the member's own 5 days stay
    clock.advance(10 * DAY)
    Sweeper(app).sweep_once()  # the unpaid renewal holds no one in
    assert "expire" in kinds_to(app, 501)


def test_a_refunded_invoice_delivered_again_is_a_duplicate_not_an_error(bot, app, telegram, cryptopay):
    from cryptopay import parse_invoice
    from db import Outcome

    paid(app, cryptopay)
    invoice = invoice_of(app)
    confirm(bot, telegram, ask(bot, telegram, invoice["invoice_id"]))
    again = parse_invoice(cryptopay.invoices[invoice["invoice_id"]])
    for cause in ("webhook", "poller", "button"):
        assert app.db.apply_invoice(again, cause, app.now(), frozenset()).outcome is Outcome.DUPLICATE
    assert app.db.expires_at(501) <= app.now()


def test_a_refund_takes_back_only_what_is_left_of_that_payments_own_time(bot, app, telegram, cryptopay, clock):
    paid(app, cryptopay)  # January: 30 days, all used
    january = invoice_of(app)
    clock.advance(40 * DAY)
    paid(app, cryptopay)  # March: 30 days from now
    clock.advance(10 * DAY)
    until = app.db.expires_at(501)
    outcome = confirm(bot, telegram, ask(bot, telegram, january["invoice_id"]))
    assert "Time taken back: 0." in outcome
    assert app.db.expires_at(501) == until  # the March payment's 20 days stay
    march = invoice_of(app)
    confirm(bot, telegram, ask(bot, telegram, march["invoice_id"]))
    assert app.db.expires_at(501) <= app.now()  # its own 20 days were what was left


def test_a_bonus_used_up_is_not_taken_back_and_another_referred_members_is_not_mistaken_for_it(
        bot, app, telegram, cryptopay, clock):
    app.db.upsert_member(601, "m601", "M", "en", app.now())
    ref = app.db.member_ref(601)
    for user in (50, 501):  # "referred": 50 is the start of "referred": 501
        app.db.upsert_member(user, f"m{user}", "M", "en", app.now())
        assert app.db.attribute_referral(user, ref, app.now()) == "referred"
    paid(app, cryptopay, user_id=50)  # the referrer's bonus: 7 days from now
    clock.advance(8 * DAY)  # used up
    paid(app, cryptopay, user_id=501)  # another 7 days
    clock.advance(DAY)
    until = app.db.expires_at(601)
    confirm(bot, telegram, ask(bot, telegram, invoice_of(app, 50)["invoice_id"]))
    assert app.db.payment(str(invoice_of(app, 50)["invoice_id"]))["status"] == "refunded"
    assert app.db.expires_at(601) == until  # the bonus member 501 earned stays


def test_after_a_revoke_and_a_new_payment_refunding_the_old_one_takes_nothing(bot, app, telegram, cryptopay, clock):
    paid(app, cryptopay)  # A
    first = invoice_of(app)
    clock.advance(2 * DAY)
    app.db.revoke(501, app.now(), "test")  # A's time ended by an admin
    clock.advance(DAY)
    paid(app, cryptopay)  # B: 30 days from now
    until = app.db.expires_at(501)
    assert "Time taken back: 0." in confirm(bot, telegram, ask(bot, telegram, first["invoice_id"]))
    assert app.db.expires_at(501) == until


def test_a_second_refund_takes_only_its_own_payments_time_after_the_first_moved_the_rest(
        bot, app, telegram, cryptopay, clock):
    paid(app, cryptopay)  # A
    a = invoice_of(app)
    paid(app, cryptopay)  # B, the same day: 60 days in all
    b = invoice_of(app)
    confirm(bot, telegram, ask(bot, telegram, a["invoice_id"]))  # 30 days taken: B's time is what is left
    clock.advance(40 * DAY)  # B's used up
    paid(app, cryptopay)  # C: 30 days from now
    until = app.db.expires_at(501)
    assert "Time taken back: 0." in confirm(bot, telegram, ask(bot, telegram, b["invoice_id"]))
    assert app.db.expires_at(501) == until  # C's time stays


def test_when_telegram_refuses_to_cancel_the_renewal_the_members_own_cancel_still_asks_it(
        bot, app, telegram):
    stars_paid(bot, telegram, app)
    charge = app.db.star_subscription(501)["charge_id"]
    telegram.fail("editUserStarSubscription", (400, {"ok": False, "error_code": 400, "description": "Bad Request"}))
    confirm(bot, telegram, ask(bot, telegram, charge))
    assert app.db.star_subscription(501)["canceled_at"] is None  # Telegram still renews it
    press(bot, "renewal:cancel")
    assert len(telegram.called("editUserStarSubscription")) == 2 and telegram.star_subscriptions[charge]["canceled"]
    assert app.db.star_subscription(501)["canceled_at"] is not None


def test_two_refunds_of_one_payment_at_once_from_two_processes_pay_once(app, make_app, cryptopay):
    """The bot (an admin's button) and the command line refunding together: each process has its
    own lock, so only the claim in the database and the spend_id keep the money from going twice."""
    import threading

    import refunds

    other = make_app(PLANS="month:30d:5:USDT,stars:30d:250:XTR", REFERRAL_BONUS="7d")  # the other process
    paid(app, cryptopay)
    row = invoice_of(app)
    barrier = threading.Barrier(2)
    results = []

    def refund(application, by):
        barrier.wait()
        results.append(refunds.run(application, row, by).status)

    threads = [threading.Thread(target=refund, args=(a, by)) for a, by in ((app, "telegram:1"), (other, "cli"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(results) == ["already", "done"], results
    assert len(cryptopay.transfers) == 1 and cryptopay.balances["USDT"] == Decimal("995")
    assert app.db.refund_of(row["id"])["status"] == "done"
    assert [r["action"] for r in app.db.member_audit(501)].count("refunded") == 1


@pytest.mark.parametrize("ref", ["x" * 500, "1 OR 1=1", "../../etc/passwd", "-1", "#", "９９"])
def test_a_hostile_or_absurd_payment_reference_is_refused_and_changes_nothing(bot, app, telegram, cryptopay, ref):
    paid(app, cryptopay)
    text = ask(bot, telegram, ref)["text"]
    assert text.startswith("There is no payment") or text.startswith("Usage: /refund PAYMENT"), text
    assert len(text) < 400 and cryptopay.called("transfer") == [] and app.db.refund_of(invoice_of(app)["id"]) is None
