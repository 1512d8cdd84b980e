"""db.py's own rules: transactions."""
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
