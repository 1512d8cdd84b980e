"""Upgrading a database made by an earlier version: schema version 9 rebuilds the invoices table
(sqlite changes no CHECK in place) while other tables name its rows; nothing may be lost, and
foreign keys must hold again afterwards."""
from pathlib import Path

import pytest

import db

SCHEMA_PATH = db.SCHEMA_PATH
SCHEMA = Path(SCHEMA_PATH).read_text(encoding="utf-8")


def schema_file(tmp_path, text: str, monkeypatch) -> None:
    """Migrations read from `text` rather than the shipped schema.sql."""
    path = tmp_path / "schema.sql"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setattr(db, "SCHEMA_PATH", path)


def database_at(tmp_path, version: int, monkeypatch) -> db.Database:
    """A database brought to `version` only, as that release left it (by the real migrate())."""
    schema_file(tmp_path, SCHEMA[:SCHEMA.index(f"-- version: {version + 1}\n")], monkeypatch)
    database = db.Database(tmp_path / "clubbot.db")
    assert database.migrate() == version
    monkeypatch.setattr(db, "SCHEMA_PATH", Path(SCHEMA_PATH))
    return database


def fill(database: db.Database) -> None:
    """A paid, discounted invoice whose payment bought a gift, used a code and earned a bonus."""
    with database.transaction() as tx:
        tx.execute("INSERT INTO members (user_id, uuid, created_at, referred_by) VALUES (1, 'u1', 0, 2)")
        tx.execute("INSERT INTO members (user_id, uuid, created_at) VALUES (2, 'u2', 0)")
        tx.execute("INSERT INTO codes (name, percent, created_at, created_by) VALUES ('A', 10, 0, 't')")
        tx.execute("""INSERT INTO invoices (payment_uuid, invoice_id, user_id, plan_id, duration, amount, currency,
                                            currency_type, status, created_at, expires_at, paid_at, code_id, gift,
                                            full_amount)
                      VALUES ('p1', 1001, 1, 'month', 2592000, '4.5', 'USDT', 'crypto', 'paid', 0, 3600, 60, 1, 1,
                              '5')""")
        tx.execute("INSERT INTO code_uses (invoice_row, code_id, user_id, at) VALUES (1, 1, 1, 60)")
        tx.execute("INSERT INTO gifts (token_hash, short_id, plan_id, duration, created_at, created_by, invoice_row) "
                   "VALUES ('h', 's', 'month', 2592000, 60, 'member:1', 1)")
        tx.execute("INSERT INTO referral_bonuses (referred_id, referrer_id, invoice_row, duration, at) "
                   "VALUES (1, 2, 1, 604800, 60)")


def test_an_v8_database_with_rows_that_name_its_invoices_upgrades_whole(tmp_path, monkeypatch):
    database = database_at(tmp_path, 8, monkeypatch)
    fill(database)
    assert database.migrate() == max(number for number, _ in db.load_migrations(SCHEMA))
    conn = database.connect()
    row = conn.execute("SELECT * FROM invoices").fetchone()
    assert (row["id"], row["invoice_id"], row["amount"], row["full_amount"], row["gift"], row["charge_id"]) == \
        (1, 1001, "4.5", "5", 1, None)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # on again for everything after
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                          "AND tbl_name = 'invoices' AND sql IS NOT NULL")}
    assert indexes == {"invoices_pending", "invoices_member", "invoices_paid", "invoices_charge"}
    with database.transaction() as tx:  # what version 9 is for
        tx.execute("UPDATE invoices SET status = 'refunded' WHERE id = 1")
    with pytest.raises(Exception, match="FOREIGN KEY"), database.transaction() as tx:
        tx.execute("INSERT INTO code_uses (invoice_row, code_id, user_id, at) VALUES (99, 1, 1, 0)")


def test_a_migration_that_would_break_a_reference_changes_nothing(tmp_path, monkeypatch):
    database = database_at(tmp_path, 8, monkeypatch)
    fill(database)
    latest = max(number for number, _ in db.load_migrations(SCHEMA))
    schema_file(tmp_path, SCHEMA + f"\n-- version: {latest + 1}\nDELETE FROM invoices;\n", monkeypatch)
    with pytest.raises(RuntimeError, match=f"schema version {latest + 1}: 3 rows would name rows that do not exist"):
        database.migrate()
    conn = database.connect()
    assert conn.execute("SELECT count(*) FROM invoices").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == latest  # the versions before it stay
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
