"""db.py's own rules: transactions, and the kinds of work the outbox takes."""
import time

import pytest


def test_a_transaction_inside_another_fails_at_once_with_a_clear_error(app):
    with app.db.transaction() as tx:
        tx.execute("INSERT INTO state (key, value) VALUES ('outer', '1')")
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="inside another"):
            with app.db.transaction():
                pass
        assert time.monotonic() - started < 0.5  # not after waiting out the lock's timeout
    assert app.db.connect().execute("SELECT value FROM state WHERE key = 'outer'").fetchone()[0] == "1"


def test_every_kind_of_work_has_a_handler_and_every_handler_a_kind():
    import inspect

    from kinds import Kind
    from outbox import KINDS, NEVER_GIVE_UP, ON_CLOSE

    assert set(KINDS) == set(Kind)
    assert all(type(kind) is Kind for kind in [*KINDS, *NEVER_GIVE_UP, *ON_CLOSE])
    for kind, handler in [*KINDS.items(), *ON_CLOSE.items()]:
        assert list(inspect.signature(handler).parameters)[0] == "ctx", kind
        assert len(inspect.signature(handler).parameters) == 3, kind


def test_a_misspelt_kind_is_refused_when_queued_and_nothing_is_written(app):
    from db import enqueue

    with pytest.raises(ValueError, match="activatd"):
        with app.db.transaction() as tx:
            tx.execute("INSERT INTO state (key, value) VALUES ('with_it', '1')")
            enqueue(tx, "activatd", 501, {}, app.now())
    conn = app.db.connect()
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM state WHERE key = 'with_it'").fetchone()[0] == 0


def test_handled_updates_are_forgotten_after_a_week_and_waiting_ones_never(app, clock):
    from workers import UPDATES_KEPT, Sweeper

    app.db.store_updates([(1, 501, "{}"), (2, 501, "{}"), (3, 502, "{}")], app.now())
    app.db.update_done(1, app.now())
    app.db.update_done(2, app.now(), status="dropped")
    clock.advance(UPDATES_KEPT + 60)
    Sweeper(app).sweep_once()
    rows = app.db.connect().execute("SELECT update_id, status FROM updates").fetchall()
    assert [tuple(row) for row in rows] == [(3, "pending")]  # a flood leaves no pile behind


def test_a_stream_of_unusable_webhooks_keeps_only_the_newest(app):
    for number in range(12):
        app.db.record_unusable_webhook(f"body {number}".encode(), "not JSON", app.now(), keep=5)
    bodies = [bytes(row[0]) for row in app.db.connect().execute("SELECT body FROM unusable_webhooks ORDER BY id")]
    assert bodies == [f"body {number}".encode() for number in range(7, 12)]
