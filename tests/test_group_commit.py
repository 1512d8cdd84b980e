"""Payments that arrive together commit together (db.Database.grouped): each once, none before
its commit, and one that fails costs the others nothing."""
import threading
import time
from decimal import Decimal

import pytest

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


@pytest.fixture
def statements(monkeypatch):
    """Every BEGIN and COMMIT any connection of the database runs, in order."""
    seen: list[str] = []
    connect = db_module.Database.connect

    def traced(self):
        conn = connect(self)
        conn.set_trace_callback(lambda sql: seen.append(sql) if sql.split()[0] in ("BEGIN", "COMMIT") else None)
        return conn

    monkeypatch.setattr(db_module.Database, "connect", traced)
    return seen


def queue_while_locked(database, count: int, calls):
    """Hold the write lock until `count` callers have queued their work, then let them commit.
    Returns each caller's result or exception, in the order of `calls`."""
    results: list = [None] * len(calls)

    def run(i, call):
        try:
            results[i] = call()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    with database.write_lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 5
        while len(database._queue) < count:
            assert time.monotonic() < deadline, f"only {len(database._queue)} of {count} queued"
            time.sleep(0.005)
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    return results


def counts(database) -> tuple[int, int]:
    conn = database.connect()
    return (conn.execute("SELECT count(*) FROM audit WHERE action = 'payment_applied'").fetchone()[0],
            conn.execute("SELECT count(*) FROM outbox WHERE kind = 'activated'").fetchone()[0])


def test_payments_that_arrive_together_are_committed_in_one_transaction(app, statements):
    now = app.now()
    paid = [pending(app.db, 500 + n, 9000 + n, now) for n in range(6)]
    statements.clear()
    results = queue_while_locked(app.db, 6, [
        lambda invoice=invoice: app.db.apply_invoice(invoice, "webhook", app.now, frozenset()) for invoice in paid])
    assert [r.outcome for r in results] == [Outcome.APPLIED] * 6
    assert statements == ["BEGIN IMMEDIATE", "COMMIT"]
    assert counts(app.db) == (6, 6)
    for n in range(6):
        assert app.db.expires_at(500 + n) == now + MONTH


def test_a_payment_that_fails_in_a_group_fails_alone(app, statements, monkeypatch):
    now = app.now()
    paid = [pending(app.db, 500 + n, 9000 + n, now) for n in range(4)]
    extend = db_module.extend_subscription

    def broken_for_502(tx, user_id, duration, now):
        if user_id == 502:
            raise OSError("disk trouble, for this member only")
        return extend(tx, user_id, duration, now)

    monkeypatch.setattr(db_module, "extend_subscription", broken_for_502)
    statements.clear()
    results = queue_while_locked(app.db, 4, [
        lambda invoice=invoice: app.db.apply_invoice(invoice, "webhook", app.now, frozenset()) for invoice in paid])
    assert isinstance(results[2], OSError)
    assert [r.outcome for i, r in enumerate(results) if i != 2] == [Outcome.APPLIED] * 3
    # Tried together, rolled back whole, then each alone: the failing one left nothing behind.
    assert statements.count("COMMIT") == 3
    assert counts(app.db) == (3, 3)
    assert app.db.invoice_by_uuid(paid[2].payload)["status"] == "pending"
    assert app.db.expires_at(502) is None
    monkeypatch.setattr(db_module, "extend_subscription", extend)
    assert app.db.apply_invoice(paid[2], "poller", app.now(), frozenset()).outcome is Outcome.APPLIED


def test_one_invoice_delivered_by_many_threads_at_once_is_applied_once(app):
    now = app.now()
    invoice = pending(app.db, 501, 9001, now)
    # Every caller reads it pending before any can write; the write sees it changed and says so.
    calls = [lambda cause=cause: app.db.apply_invoice(invoice, cause, app.now, frozenset())
             for cause in ("webhook", "poller", "button", "webhook", "webhook")]
    results = queue_while_locked(app.db, 5, calls)
    assert sorted(r.outcome.name for r in results) == ["APPLIED"] + ["DUPLICATE"] * 4
    assert counts(app.db) == (1, 1)
    assert app.db.expires_at(501) == now + MONTH


def test_many_threads_paying_at_once_stack_each_members_time_exactly(app):
    now = app.now()
    invoices = [pending(app.db, 500 + n % 10, 9000 + n, now) for n in range(60)]
    errors: list[BaseException] = []

    def pay(chunk):
        try:
            for invoice in chunk:
                for _ in range(2):  # and each delivered twice
                    app.db.apply_invoice(invoice, "webhook", app.now, frozenset())
        except BaseException as exc:  # pragma: no cover - reported below
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


def test_work_that_cannot_get_the_lock_in_time_is_refused_and_never_committed_later(app, monkeypatch):
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)
    invoice = pending(app.db, 501, 9001, app.now())
    with app.db.write_lock:  # another writer of this process holds it too long
        with pytest.raises(Exception, match="database is locked"):
            app.db.apply_invoice(invoice, "webhook", app.now, frozenset())
        assert app.db._queue == []
    assert app.db.invoice_by_uuid(invoice.payload)["status"] == "pending"
    assert app.db.apply_invoice(invoice, "webhook", app.now, frozenset()).outcome is Outcome.APPLIED
    assert counts(app.db) == (1, 1)


def test_grouped_work_inside_a_transaction_fails_at_once(app):
    with app.db.transaction():
        with pytest.raises(RuntimeError, match="inside a transaction"):
            app.db.grouped(lambda tx: None)
    assert app.db._queue == []


def test_an_interrupted_commit_writes_nothing_of_anyone_and_says_so(app, monkeypatch):
    now = app.now()
    paid = [pending(app.db, 500 + n, 9000 + n, now) for n in range(3)]
    extend = db_module.extend_subscription

    def interrupted(tx, user_id, duration, now):
        if user_id == 501:
            raise KeyboardInterrupt  # as a signal would, on whichever thread commits
        return extend(tx, user_id, duration, now)

    monkeypatch.setattr(db_module, "extend_subscription", interrupted)
    results: list = [None] * 3

    def run(i):
        try:
            results[i] = app.db.apply_invoice(paid[i], "webhook", app.now, frozenset())
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    with app.db.write_lock:
        for thread in threads:
            thread.start()
        while len(app.db._queue) < 3:
            time.sleep(0.005)
    for thread in threads:
        thread.join(5)
    assert all(isinstance(r, BaseException) for r in results), results
    assert counts(app.db) == (0, 0)
    assert [app.db.invoice_by_uuid(i.payload)["status"] for i in paid] == ["pending"] * 3
