"""Buying, the check button and the polling fallback, against the fake Crypto Pay."""
import threading
from decimal import Decimal

import pytest
import requests
import responses
from builders import audit_rows
from conftest import START, wait_for

from cryptopay import CryptoPay, CryptoPayError
from payments import buy, check, poll_once
from workers import Poller


def member(app, user_id=501):
    app.db.upsert_member(user_id, "member", "Member", "en", app.now())
    return user_id


def test_buying_creates_an_invoice_that_carries_the_payment_uuid(app, cryptopay):
    purchase = buy(app, member(app), app.config.plan("month"), "30 days")
    row = purchase.invoice
    assert row["status"] == "pending" and row["invoice_id"] == 1001
    created = cryptopay.called("createInvoice")[0]
    assert created["payload"] == row["payment_uuid"]
    assert created["amount"] == "5" and created["asset"] == "USDT" and created["currency_type"] == "crypto"
    assert created["expires_in"] == 3600
    assert "30 days" in created["description"]
    assert created["paid_btn_name"] == "openBot" and created["paid_btn_url"] == "https://t.me/club_test_bot"
    assert row["pay_url"] == "https://t.me/CryptoBot?start=IV1001"
    assert (row["amount"], row["currency"], row["duration"]) == ("5", "USDT", 30 * 86400)


def test_a_fiat_plan_asks_for_fiat_paid_in_the_accepted_assets(app, cryptopay, make_config, clock):
    from runtime import build_app

    fiat = build_app(make_config(PLANS="month:30d:9.99:USD", ACCEPTED_ASSETS="USDT,TON",
                                 DATABASE_PATH=str(app.db.path.parent / "fiat.db")), clock=clock)
    buy(fiat, member(fiat), fiat.config.plan("month"), "month")
    created = cryptopay.called("createInvoice")[0]
    assert (created["currency_type"], created["fiat"], created["accepted_assets"], created["amount"]) == (
        "fiat", "USD", "USDT,TON", "9.99")


def test_an_unexpired_pending_invoice_is_reused(app, cryptopay, clock):
    user = member(app)
    first = buy(app, user, app.config.plan("month"), "month").invoice
    again = buy(app, user, app.config.plan("month"), "month").invoice
    assert again["payment_uuid"] == first["payment_uuid"]
    other_plan = buy(app, user, app.config.plan("year"), "year").invoice
    assert other_plan["payment_uuid"] != first["payment_uuid"]
    clock.advance(3600 - 60)  # too little time left to pay it
    fresh = buy(app, user, app.config.plan("month"), "month").invoice
    assert fresh["payment_uuid"] != first["payment_uuid"]
    assert len(cryptopay.called("createInvoice")) == 3


def test_a_crypto_pay_failure_raises_and_leaves_no_pending_invoice(app, cryptopay):
    cryptopay.fail("createInvoice", (500, {"ok": False, "error": {"code": 500, "name": "INTERNAL_ERROR"}}))
    with pytest.raises(CryptoPayError) as error:
        buy(app, member(app), app.config.plan("month"), "month")
    assert (error.value.name, error.value.status) == ("INTERNAL_ERROR", 500)
    assert app.db.pending_invoice_ids() == []


def test_a_free_trial_is_given_once_per_member_ever(app, clock):
    user = member(app)
    trial = app.config.plan("trial")
    first = buy(app, user, trial, "trial")
    assert first.trial_expires_at == START + 3 * 86400
    clock.advance(10 * 86400)
    second = buy(app, user, trial, "trial")
    assert second.trial_refused and second.trial_expires_at is None
    assert app.db.expires_at(user) == START + 3 * 86400


def test_the_check_button_applies_a_paid_invoice_at_once(app, cryptopay):
    user = member(app)
    row = buy(app, user, app.config.plan("month"), "month").invoice
    assert check(app, row["payment_uuid"], user) == "check_waiting"
    cryptopay.pay(row["invoice_id"])
    assert check(app, row["payment_uuid"], user) == "check_paid"
    assert check(app, row["payment_uuid"], user) == "check_paid"
    assert app.db.expires_at(user) == START + 30 * 86400
    assert [(r["action"], r["cause"]) for r in audit_rows(app.db, user)] == [("payment_applied", "button")]
    assert check(app, row["payment_uuid"], 999) == "check_unknown"


def test_the_check_button_reports_expiry_and_outages(app, cryptopay):
    user = member(app)
    row = buy(app, user, app.config.plan("month"), "month").invoice
    cryptopay.fail("getInvoices", (502, b"<html>bad gateway</html>"))
    assert check(app, row["payment_uuid"], user) == "check_failed"
    cryptopay.expire(row["invoice_id"])
    assert check(app, row["payment_uuid"], user) == "check_expired"
    assert app.db.invoice_by_uuid(row["payment_uuid"])["status"] == "expired"


def test_the_poller_makes_no_call_when_nothing_is_pending(app, cryptopay):
    assert poll_once(app) == 0
    assert cryptopay.called("getInvoices") == []


def test_the_poller_activates_a_payment_whose_webhook_never_came(app, cryptopay):
    user = member(app)
    row = buy(app, user, app.config.plan("month"), "month").invoice
    other = buy(app, member(app, 502), app.config.plan("year"), "year").invoice
    cryptopay.pay(row["invoice_id"])
    cryptopay.expire(other["invoice_id"])
    assert poll_once(app) == 1
    asked = cryptopay.called("getInvoices")[0]
    assert asked["invoice_ids"] == f"{row['invoice_id']},{other['invoice_id']}"
    assert int(asked["count"]) == 2
    assert app.db.expires_at(user) == START + 30 * 86400
    assert app.db.invoice_by_uuid(other["payment_uuid"])["status"] == "expired"
    assert [(r["action"], r["cause"]) for r in audit_rows(app.db, user)] == [("payment_applied", "poller")]
    assert poll_once(app) == 0  # nothing pending any more


def test_the_poller_asks_about_at_most_1000_invoices_a_call(app):
    conn = app.db.connect()
    member(app)
    with app.db.transaction() as tx:
        for n in range(2500):
            tx.execute("""INSERT INTO invoices (payment_uuid, invoice_id, user_id, plan_id, duration, amount,
                          currency, currency_type, status, created_at, expires_at)
                          VALUES (?, ?, 501, 'month', 60, '5', 'USDT', 'crypto', 'pending', ?, ?)""",
                       (f"uuid-{n}", 10_000 + n, START, START + 3600))
    assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 2500
    client = CryptoPay("https://pay.example.test/api", "1234:TESTTOKEN")
    app.cryptopay = client
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, "https://pay.example.test/api/getInvoices",
                 json={"ok": True, "result": {"items": []}})
        assert poll_once(app) == 3
        sizes = [len(__import__("json").loads(call.request.body)["invoice_ids"].split(","))
                 for call in mock.calls]
    assert sizes == [1000, 1000, 500]


def test_the_poller_thread_polls_at_start_not_after_one_interval(app, cryptopay):
    user = member(app)
    row = buy(app, user, app.config.plan("month"), "month").invoice
    cryptopay.pay(row["invoice_id"])
    thread = threading.Thread(target=Poller(app).run, daemon=True)
    thread.start()
    wait_for(lambda: app.db.expires_at(user), timeout=5)  # at start, not after one interval
    app.stop.set()
    thread.join(5)
    assert not thread.is_alive()


def poller_waits(app, monkeypatch, rounds: int = 5) -> list:
    """Run the poller for `rounds` turns without waiting; the delay it asked before each."""
    waits = []
    original_wait = app.stop.wait

    def recording_wait(delay=None):
        waits.append(delay)
        if len(waits) >= rounds:
            app.stop.set()
        return original_wait(0)

    monkeypatch.setattr(app.stop, "wait", recording_wait)
    Poller(app).run()
    return waits


def test_the_poller_backs_off_while_crypto_pay_is_down(app, cryptopay, monkeypatch):
    user = member(app)
    buy(app, user, app.config.plan("month"), "month")
    failure = (502, b"<html>bad gateway</html>")
    cryptopay.fail("getInvoices", *[failure] * 100)
    waits = poller_waits(app, monkeypatch)
    assert waits[0] == 0  # first poll at once
    assert waits[1:5] == [2, 4, 8, 16]  # POLL_INTERVAL=1s, doubling while Crypto Pay fails


def test_the_poller_backs_off_on_an_unexpected_failure_too(app, monkeypatch):
    """A locked database or a full disk, every POLL_INTERVAL (3 s without a webhook), would fill
    the log with tracebacks: it waits longer each time, as for Crypto Pay."""
    import workers

    monkeypatch.setattr(workers, "poll_once", lambda app, watch: (_ for _ in ()).throw(OSError("disk full")))
    assert poller_waits(app, monkeypatch)[1:5] == [2, 4, 8, 16]


def test_crypto_pay_errors_carry_the_name_and_http_status():
    client = CryptoPay("https://pay.example.test/api", "1234:TESTTOKEN")
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, "https://pay.example.test/api/getMe", status=401,
                 json={"ok": False, "error": {"code": 401, "name": "UNAUTHORIZED"}})
        with pytest.raises(CryptoPayError) as error:
            client.get_me()
        assert (error.value.name, error.value.status, error.value.is_auth_error) == ("UNAUTHORIZED", 401, True)
        assert mock.calls[0].request.headers["Crypto-Pay-API-Token"] == "1234:TESTTOKEN"
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, "https://pay.example.test/api/getMe", body=requests.exceptions.ConnectionError("down"))
        with pytest.raises(CryptoPayError) as error:
            client.get_me()
        assert (error.value.name, error.value.status) == ("NETWORK_ERROR", None)
        assert "TESTTOKEN" not in str(error.value)


def test_amounts_go_out_as_decimal_strings():
    client = CryptoPay("https://pay.example.test/api", "1234:TESTTOKEN")
    with responses.RequestsMock() as mock:
        mock.add(responses.POST, "https://pay.example.test/api/createInvoice", json={"ok": True, "result": {
            "invoice_id": 5, "status": "active", "asset": "USDT", "amount": "0.1", "bot_invoice_url": "u"}})
        invoice = client.create_invoice(amount=Decimal("0.10000000"), currency="USDT", fiat=False, payload="p",
                                        description="d", expires_in=60)
        sent = __import__("json").loads(mock.calls[0].request.body)
    assert sent["amount"] == "0.10000000"
    assert invoice.amount == Decimal("0.1")


def test_a_payment_is_checked_against_the_amount_crypto_pay_wrote_on_the_invoice(make_config, clock, cryptopay):
    """Crypto Pay may write an amount differently (here: rounded to 2 places)."""
    from cryptopay import parse_invoice
    from runtime import build_app

    app = build_app(make_config(PLANS="month:30d:4.999:USDT"), clock=clock)
    app.db.upsert_member(501, "m", "M", "en", app.now())
    original = cryptopay.answer

    def rounding(method, params, headers):
        if method == "createInvoice":
            params = {**params, "amount": "5.00"}
        return original(method, params, headers)

    cryptopay.answer = rounding
    row = buy(app, 501, app.config.plan("month"), "month").invoice
    assert row["invoice_amount"] == "5.00" and row["amount"] == "4.999"
    result = app.db.apply_invoice(parse_invoice(cryptopay.pay(row["invoice_id"])), "webhook", app.now(),
                                  app.config.admin_ids)
    assert result.outcome.value == "applied"


def test_each_thread_talks_to_crypto_pay_through_its_own_session(app, cryptopay):
    import threading

    seen = []

    def use() -> None:
        app.cryptopay.get_me()
        seen.append((app.cryptopay.session, app.cryptopay.session))

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(first is second for first, second in seen)  # kept within a thread
    assert len({id(first) for first, _ in seen}) == 3  # never shared between handler threads
