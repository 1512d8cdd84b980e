"""Payments applied from many threads at once: each exactly once, and each member's time
stacked exactly. The invoice is read before the write lock (db.apply_invoice) and the write
checks that it is still as read."""
import threading
import time
from decimal import Decimal

import db as db_module
from cryptopay import Invoice
from db import Outcome

MONTH = 30 * 86400


def pending(database, user_id: int, invoice_id: int, now: int, amount: str = "5") -> Invoice:
    """A pending invoice of `user_id` in the database, and Crypto Pay's word that it is paid."""
    database.upsert_member(user_id, None, None, "en", now)
    payment_uuid = database.start_invoice(user_id, "month", MONTH, Decimal(amount), "USDT", False, now, 3600)
    database.invoice_created(payment_uuid, invoice_id, f"https://t.me/CryptoBot?start=IV{invoice_id}")
    return Invoice(invoice_id=invoice_id, status="paid", currency_type="crypto", currency="USDT",
                   amount=Decimal(amount), payload=payment_uuid, pay_url=None, paid_asset="USDT",
                   paid_amount=amount)


def counts(database) -> tuple[int, int]:
    conn = database.connect()
    return (conn.execute("SELECT count(*) FROM audit WHERE action = 'payment_applied'").fetchone()[0],
            conn.execute("SELECT count(*) FROM outbox WHERE kind = 'activated'").fetchone()[0])


def test_one_invoice_delivered_by_many_threads_at_once_is_applied_once(app, all_read_first):
    now = app.now()
    invoice = pending(app.db, 501, 9001, now)
    results = all_read_first([lambda cause=cause: app.db.apply_invoice(invoice, cause, app.now, frozenset())
                              for cause in ("webhook", "poller", "button", "webhook", "webhook")])
    assert sorted(r.outcome.name for r in results) == ["APPLIED"] + ["DUPLICATE"] * 4
    assert counts(app.db) == (1, 1)
    assert app.db.expires_at(501) == now + MONTH


def test_an_invoice_changed_after_it_was_read_is_applied_as_it_is_now(app, monkeypatch):
    """The row read before the lock is used only if the write finds it unchanged."""
    import sqlite3

    invoice = pending(app.db, 501, 9001, app.now())  # asked 5 USDT, paid 5 USDT
    entered = threading.Event()
    transaction = db_module.Database.transaction

    def counted(self):
        entered.set()  # the invoice has been read; the write lock is next
        return transaction(self)

    monkeypatch.setattr(db_module.Database, "transaction", counted)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(
        app.db.apply_invoice(invoice, "webhook", app.now, frozenset())))
    with app.db.write_lock:
        thread.start()
        assert entered.wait(5)
        # Meanwhile another process records the invoice at another amount.
        other = sqlite3.connect(app.db.path, isolation_level=None)
        other.execute("UPDATE invoices SET invoice_amount = '7' WHERE invoice_id = 9001")
        other.close()
    thread.join(5)
    assert result[0].outcome is Outcome.MISMATCH  # 5 paid, 7 asked: checked as it is now
    assert app.db.connect().execute("SELECT status FROM invoices WHERE invoice_id = 9001").fetchone()[0] == "mismatch"
    assert counts(app.db) == (0, 0)


def test_many_threads_paying_at_once_stack_each_members_time_exactly(app):
    now = app.now()
    invoices = [pending(app.db, 500 + n % 10, 9000 + n, now) for n in range(60)]
    errors: list[BaseException] = []

    def pay(chunk):
        try:
            for invoice in chunk:
                for _ in range(2):  # and each delivered twice
                    app.db.apply_invoice(invoice, "webhook", app.now, frozenset())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=pay, args=(invoices[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert counts(app.db) == (60, 60)
    for member in range(500, 510):
        assert app.db.expires_at(member) == now + 6 * MONTH


def test_a_delivery_again_is_answered_without_the_write_lock(app):
    """paid is final, so a duplicate is known from a read: a writer holding the lock (the
    other process's sweep, say) does not hold up CryptoBot's retries."""
    invoice = pending(app.db, 501, 9001, app.now())
    assert app.db.apply_invoice(invoice, "poller", app.now(), frozenset()).outcome is Outcome.APPLIED
    with app.db.write_lock:
        started = time.monotonic()
        assert app.db.apply_invoice(invoice, "poller", app.now(), frozenset()).outcome is Outcome.DUPLICATE
        assert time.monotonic() - started < 0.5
    assert counts(app.db) == (1, 1)
