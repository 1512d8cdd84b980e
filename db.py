"""Every SQL statement and transaction of ClubBot; the only module that opens the database.

One connection per thread. Writes go through `Database.transaction()`: a
process-wide lock (sqlite's busy handler sleeps instead of waking when the
lock frees) around `BEGIN IMMEDIATE`; `busy_timeout` covers the other process
of the split setup. Reads need no lock (WAL).
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import string
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from config import STARS
from cryptopay import Invoice
from files import create_private_file, make_private_folders
from kinds import Kind

SCHEMA_PATH = Path(__file__).with_name("schema.sql")
BUSY_TIMEOUT_MS = 5000

# Members with time left all match this, and it lets queries by expiry use the
# subscriptions_unhandled index.
ACTIVE = "removed_for IS NOT expires_at"

# Outbox priorities: lower goes first.
PRIORITY_NOW = 0  # activations, approvals: a member is waiting
PRIORITY_NORMAL = 5  # alerts, reminders, removals
PRIORITY_BULK = 9  # broadcasts

# Gift links: tokens of 43 letters and digits, 256 bits ("g-" + token within Telegram's 64
# for a deep link), of which only the sha256 is stored, with its first SHORT_ID characters as
# a public id. Letters and digits only: a link ending in "-" or "_" may lose it where a chat
# app or a mail reader finds links in text.
GIFT_TOKEN_LENGTH = 43
GIFT_SHORT_ID = 8
# What a GIFT_BOUGHT message carries until it is sent, and no longer (the database keeps no
# usable link once the buyer has it).
GIFT_SECRET = "token"
# An invoice in these has had its payment: a delivery of it again is a duplicate.
FINAL = ("paid", "mismatch", "refunded")
# How long after a Stars subscription's renewal date a member whose time ran out is kept,
# waiting for the renewal's payment, before the removal.
RENEWAL_WAIT = 86400
# Public referral codes: 8 letters and digits, 47 bits (t.me/<bot>?start=r-<ref>).
REF_LENGTH = 8
_ALPHANUMERIC = string.ascii_letters + string.digits


def random_code(length: int) -> str:
    """A random string of letters and digits, from the system's secure source."""
    return "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))

# The alert states that any webhook of ours, arriving, shows to be over (payments.note_webhooks_missing,
# payments.note_unusable_webhook): set back to ok in the transaction that records the arrival.
WEBHOOK_STATE, UNUSABLE_STATE = "webhook", "webhook_unusable"
WEBHOOK_STATES = (WEBHOOK_STATE, UNUSABLE_STATE)
_WEBHOOKS_WORK = "UPDATE state SET value = 'ok' WHERE key IN (?, ?) AND value = 'bad'"

def load_migrations(text: str) -> list[tuple[int, str]]:
    """Split schema.sql into (version, sql) sections."""
    parts = re.split(r"^-- version: (\d+)\s*$", text, flags=re.MULTILINE)
    migrations = [(int(parts[i]), parts[i + 1]) for i in range(1, len(parts), 2)]
    versions = [v for v, _ in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"schema.sql versions must be 1, 2, 3...; found {versions}")
    return migrations


class Database:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._local = threading.local()
        self.write_lock = threading.Lock()
        self._arrival_noted: int | None = None  # the second a duplicate webhook's arrival was last written
        self._alerts_cleared: int | None = None  # the second a webhook last set WEBHOOK_STATES back to ok

    # --- connections and transactions ---

    def connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            # WAL with NORMAL survives a crash of the process; a power cut may drop the last
            # commits, and then the poller finds those payments again as pending and paid.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA wal_autocheckpoint = 4000")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connect()
        if conn.in_transaction:
            # This thread holds the write lock already: waiting for it would only time out.
            raise RuntimeError("a transaction was started inside another on the same thread; "
                               "pass the open transaction (tx) to the helper instead")
        # The same bound as sqlite's own busy wait: writers of this process queue here, and
        # must not each wait out the busy timeout in turn behind one another.
        if not self.write_lock.acquire(timeout=BUSY_TIMEOUT_MS / 1000):
            raise sqlite3.OperationalError("database is locked (this process's writers are queued)")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            self.write_lock.release()

    def migrate(self) -> int:
        """Create the folder and apply pending migrations; return the schema version."""
        make_private_folders(self.path.parent)
        # Made 0600 before sqlite first opens it: sqlite gives -wal and -shm the database's mode.
        create_private_file(self.path)
        conn = self.connect()
        conn.execute("PRAGMA journal_mode = WAL")
        # Off while migrating (it cannot change inside a transaction): a migration may rebuild
        # a table that others refer to, sqlite's own way; each is checked before it commits.
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            for version, sql in load_migrations(SCHEMA_PATH.read_text(encoding="utf-8")):
                with self.transaction() as tx:
                    current = tx.execute("PRAGMA user_version").fetchone()[0]
                    if current >= version:
                        continue
                    for statement in _statements(sql):
                        tx.execute(statement)
                    broken = tx.execute("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise RuntimeError(f"schema version {version}: {len(broken)} rows would name rows "
                                           f"that do not exist (first: {tuple(broken[0])}); nothing was changed")
                    tx.execute(f"PRAGMA user_version = {version}")
        finally:
            conn.execute("PRAGMA foreign_keys = ON")
        return conn.execute("PRAGMA user_version").fetchone()[0]

    # --- members ---

    def upsert_member(self, user_id: int, username: str | None, first_name: str | None,
                      language: str | None, now: int) -> sqlite3.Row:
        """Record a member as seen now, with their current username.

        A username moves between accounts, and Telegram tells no one when it does: the
        member seen with it now is its only holder, so every other row loses it here.
        """
        with self.transaction() as tx:
            if username:
                tx.execute("UPDATE members SET username = NULL WHERE username = ? COLLATE NOCASE AND user_id != ?",
                           (username, user_id))
            tx.execute(
                """INSERT INTO members (user_id, uuid, username, first_name, language, created_at, seen_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (user_id) DO UPDATE SET
                     username = excluded.username,
                     first_name = excluded.first_name,
                     language = COALESCE(excluded.language, members.language),
                     seen_at = excluded.seen_at""",
                (user_id, str(uuid.uuid4()), username, first_name, language, now, now),
            )
            return tx.execute("SELECT * FROM members WHERE user_id = ?", (user_id,)).fetchone()

    def member(self, user_id: int) -> sqlite3.Row | None:
        return self.connect().execute("SELECT * FROM members WHERE user_id = ?", (user_id,)).fetchone()

    def subscription(self, user_id: int) -> sqlite3.Row | None:
        return self.connect().execute("SELECT * FROM subscriptions WHERE user_id = ?", (user_id,)).fetchone()

    def expires_at(self, user_id: int) -> int | None:
        """Until when the member has time; None if never, 0 if revoked (whatever the clock says:
        a revoke made while it ran ahead must not give time back when it is corrected)."""
        row = self.subscription(user_id)
        if row is None:
            return None
        return 0 if row["revoked_at"] is not None else row["expires_at"]

    # --- invoices ---

    def reusable_invoice(self, user_id: int, plan_id: str, duration: int, amount: Decimal, currency: str,
                         fiat: bool, accepted_assets: tuple[str, ...], valid_after: int,
                         code_id: int | None = None, gift: bool = False) -> sqlite3.Row | None:
        """A pending invoice of this member, still valid after `valid_after`, that buys exactly
        what the member is shown today: the same plan, duration, price (`amount`: after any
        discount), discount code (or none), kind of currency and, for fiat, the same assets to
        pay in. An invoice made before the owner changed the plan would apply the old terms when
        paid; one made with a code must not serve a buy without it, nor the other way round, and
        one for a gift (`gift`) not a buy for oneself, nor the other way round."""
        return self.connect().execute(
            """SELECT * FROM invoices
               WHERE user_id = ? AND plan_id = ? AND status = 'pending'
                 AND duration = ? AND amount = ? AND currency = ? AND currency_type = ?
                 AND accepted_assets IS ? AND code_id IS ? AND gift = ? AND expires_at > ?
               ORDER BY expires_at DESC LIMIT 1""",
            (user_id, plan_id, duration, str(amount), currency, _currency_type(currency, fiat),
             _assets_column(fiat, accepted_assets), code_id, int(gift), valid_after),
        ).fetchone()

    def held_invoice(self, user_id: int, plan_id: str, code_id: int | None, now: int,
                     gift: bool = False) -> sqlite3.Row | None:
        """The member's own invoice for this plan and code (and gift or not) that is still payable,
        however soon it expires (reusable_invoice wants one with minutes left)."""
        return self.connect().execute(
            """SELECT * FROM invoices WHERE user_id = ? AND plan_id = ? AND code_id IS ? AND gift = ?
                 AND status = 'pending' AND expires_at > ? ORDER BY expires_at DESC LIMIT 1""",
            (user_id, plan_id, code_id, int(gift), now)).fetchone()

    def start_invoice(self, user_id: int, plan_id: str, duration: int, amount: Decimal,
                      currency: str, fiat: bool, now: int, ttl: int,
                      accepted_assets: tuple[str, ...] = (), code_id: int | None = None,
                      full_amount: Decimal | None = None, gift: bool = False) -> str:
        """Record an invoice about to be created at Crypto Pay; return its payment UUID.
        With a code: `amount` is the discounted price asked, `full_amount` the plan's price.
        `gift`: bought as a gift, the payment makes a gift link rather than giving time."""
        payment_uuid = str(uuid.uuid4())
        with self.transaction() as tx:
            tx.execute(
                """INSERT INTO invoices (payment_uuid, user_id, plan_id, duration, amount, currency,
                                         currency_type, accepted_assets, status, created_at, expires_at,
                                         code_id, full_amount, gift)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'creating', ?, ?, ?, ?, ?)""",
                (payment_uuid, user_id, plan_id, duration, str(amount), currency,
                 _currency_type(currency, fiat), _assets_column(fiat, accepted_assets), now, now + ttl,
                 code_id, None if full_amount is None else str(full_amount), int(gift)),
            )
            if code_id is not None:
                _reserve_code_use(tx, code_id, user_id, now, payment_uuid)
                _audit(tx, now, user_id, "code_applied", "bot", None,
                       {"code_id": code_id, "plan": plan_id, "payment_uuid": payment_uuid,
                        "amount": f"{amount} {currency}", "full_amount": f"{full_amount} {currency}"})
        return payment_uuid

    def invoice_created(self, payment_uuid: str, invoice_id: int, pay_url: str | None,
                        invoice_amount: Decimal | None = None) -> None:
        with self.transaction() as tx:
            tx.execute(
                """UPDATE invoices SET invoice_id = ?, pay_url = ?, invoice_amount = ?, status = 'pending'
                   WHERE payment_uuid = ? AND status = 'creating'""",
                (invoice_id, pay_url, None if invoice_amount is None else str(invoice_amount), payment_uuid),
            )

    def invoice_failed(self, payment_uuid: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE invoices SET status = 'failed' WHERE payment_uuid = ? AND status = 'creating'",
                       (payment_uuid,))

    def invoice_by_uuid(self, payment_uuid: str) -> sqlite3.Row | None:
        return self.connect().execute("SELECT * FROM invoices WHERE payment_uuid = ?", (payment_uuid,)).fetchone()

    def pending_invoice_ids(self) -> list[int]:
        rows = self.connect().execute(
            "SELECT invoice_id FROM invoices WHERE status = 'pending' AND invoice_id IS NOT NULL ORDER BY id"
        ).fetchall()
        return [row[0] for row in rows]

    def stale_invoice_ids(self, invoice_ids: list[int], expired_before: int) -> list[int]:
        """Of these pending invoices, those whose own expiry is older than `expired_before`."""
        stale: list[int] = []
        for start in range(0, len(invoice_ids), 500):
            chunk = invoice_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.connect().execute(
                f"""SELECT invoice_id FROM invoices
                    WHERE status = 'pending' AND expires_at < ? AND invoice_id IN ({marks})""",
                (expired_before, *chunk),
            ).fetchall()
            stale.extend(row[0] for row in rows)
        return stale

    def expire_invoices(self, invoice_ids: list[int], cause: str, now: int) -> int:
        """Mark pending invoices that Crypto Pay reports expired; return how many changed."""
        changed = 0
        with self.transaction() as tx:
            for invoice_id in invoice_ids:
                row = tx.execute(
                    """UPDATE invoices SET status = 'expired'
                       WHERE invoice_id = ? AND status = 'pending' RETURNING user_id""",
                    (invoice_id,),
                ).fetchone()
                if row:
                    changed += 1
                    _audit(tx, now, row["user_id"], "invoice_expired", cause, invoice_id)
        return changed

    def apply_invoice(self, paid: Invoice, cause: str, now: int | Callable[[], int],
                      admin_ids: frozenset[int], referral_bonus: int | None = None) -> ApplyResult:
        """Apply a paid invoice exactly once: the step to paid, the member's new expiry (or, for
        a plan bought as a gift, its link), the audit record, the messages to send and, for a
        referred member's first payment, the referrer's `referral_bonus`, in one transaction.
        `now` may be the clock itself, read under the write lock, so that the order of paid_at
        is the order of commits."""
        if paid.status != "paid":
            raise ValueError(f"invoice {paid.invoice_id} is {paid.status}, not paid: nothing to apply")
        clock = now if callable(now) else (lambda: now)
        # Read before the write lock: paid and mismatch are final, so a delivery again is known
        # here, and for a new payment the write checks that the row is still as read.
        seen = self.connect().execute("SELECT * FROM invoices WHERE invoice_id = ?", (paid.invoice_id,)).fetchone()
        if seen is not None and seen["status"] in FINAL:
            if cause == "webhook":
                self._webhook_again(seen["id"], clock())
            return ApplyResult(Outcome.DUPLICATE, user_id=seen["user_id"])
        with self.transaction() as tx:
            return self._apply(tx, paid, cause, clock(), admin_ids, seen, referral_bonus)

    def _webhook_again(self, row_id: int, now: int) -> None:
        """A webhook delivered again: its arrival is what the poller's watch asks about
        (webhook_seen_since: did any come after a payment it applied?). Written once a second
        at most, which answers that question to the second, however many retries arrive."""
        if self._arrival_noted == now:
            return
        with self.transaction() as tx:
            tx.execute("UPDATE invoices SET webhook_at = ? WHERE id = ?", (now, row_id))
            self._clear_webhook_alerts(tx, now)
        self._arrival_noted = now

    def _clear_webhook_alerts(self, tx: sqlite3.Connection, now: int) -> None:
        """An invoice of ours came by webhook: CryptoBot delivers, and we can read it. Once a
        second is enough: an alert state is a condition, not a count."""
        if self._alerts_cleared != now:
            tx.execute(_WEBHOOKS_WORK, WEBHOOK_STATES)
            self._alerts_cleared = now

    def _apply(self, tx: sqlite3.Connection, paid: Invoice, cause: str, now: int,
               admin_ids: frozenset[int], seen: sqlite3.Row | None = None,
               referral_bonus: int | None = None) -> ApplyResult:
        """apply_invoice's transaction. `seen`: the invoice's row as read before the write lock,
        used if it is still as read (the update below checks), and read again if not."""
        row = seen
        if row is None:
            row = tx.execute("SELECT * FROM invoices WHERE invoice_id = ?", (paid.invoice_id,)).fetchone()
        if row is None and paid.payload:
            # Created at Crypto Pay, but the process stopped before it saved the id.
            row = tx.execute("SELECT * FROM invoices WHERE payment_uuid = ? AND invoice_id IS NULL",
                             (paid.payload,)).fetchone()
        if row is None:
            return ApplyResult(Outcome.NOT_OURS)
        if cause == "webhook":
            self._clear_webhook_alerts(tx, now)
        if row["status"] in FINAL:  # applied since the look before the lock
            if cause == "webhook":
                tx.execute("UPDATE invoices SET webhook_at = ? WHERE id = ?", (now, row["id"]))
            return ApplyResult(Outcome.DUPLICATE, user_id=row["user_id"])
        asked = (row["currency_type"], row["currency"], Decimal(row["invoice_amount"] or row["amount"]))
        got = (paid.currency_type, paid.currency, paid.amount)
        payload_ok = paid.payload is None or paid.payload == row["payment_uuid"]
        outcome = "paid" if asked == got and payload_ok else "mismatch"
        if not _set_invoice_outcome(tx, row, outcome, paid, now, cause):
            if seen is None:  # read in this same transaction: cannot happen
                raise RuntimeError(f"invoice row {row['id']} changed under a write transaction")
            # changed since the look: again, as it is now
            return self._apply(tx, paid, cause, now, admin_ids, None, referral_bonus)
        detail = {
            "payment_uuid": row["payment_uuid"], "plan": row["plan_id"],
            "asked": f"{row['amount']} {row['currency']}",
            "paid": f"{paid.amount} {paid.currency}",
            "paid_asset": paid.paid_asset, "paid_amount": paid.paid_amount,
        }
        if outcome == "mismatch":
            return _mismatch(tx, row, now, cause, paid.invoice_id, detail, admin_ids, paid.invoice_id)
        return _paid(tx, row, now, cause, paid.invoice_id, detail, referral_bonus)

    def apply_star_payment(self, paid: StarPayment, cause: str, now: int, admin_ids: frozenset[int],
                           referral_bonus: int | None = None) -> ApplyResult:
        """Apply a Telegram Stars payment exactly once, by its charge id, in the transaction a
        Crypto Pay payment gets (the time or gift link, audit, messages, referral bonus). The
        first payment steps its invoice to paid; a renewal (its invoice is paid already) gets a
        row of its own. A subscription's next charge date is recorded."""
        with self.transaction() as tx:
            if tx.execute("SELECT 1 FROM invoices WHERE charge_id = ?", (paid.charge_id,)).fetchone():
                return ApplyResult(Outcome.DUPLICATE, user_id=paid.user_id)
            row = tx.execute("SELECT * FROM invoices WHERE payment_uuid = ? AND currency_type = 'stars'",
                             (paid.payload,)).fetchone()
            if row is None:
                return ApplyResult(Outcome.NOT_OURS, user_id=paid.user_id)
            ok = paid.currency == STARS and Decimal(paid.amount) == Decimal(row["amount"])
            status = "paid" if ok else "mismatch"
            subscription = _star_subscription_of(tx, paid)
            if row["status"] == "pending" and row["user_id"] == paid.user_id:
                row = tx.execute("UPDATE invoices SET status = ?, charge_id = ?, paid_at = ?, paid_asset = ?, "
                                 "paid_amount = ?, applied_by = ? WHERE id = ? RETURNING *",
                                 (status, paid.charge_id, now, paid.currency, str(paid.amount), cause,
                                  row["id"])).fetchone()
            else:  # a renewal, or (against pre-checkout's answer) an invoice paid by someone else
                first = None if subscription is None else tx.execute(
                    "SELECT id FROM invoices WHERE charge_id = ?", (subscription["charge_id"],)).fetchone()
                row = tx.execute(
                    """INSERT INTO invoices (payment_uuid, user_id, plan_id, duration, amount, currency, currency_type,
                                             status, created_at, expires_at, paid_at, paid_asset, paid_amount,
                                             applied_by, charge_id, renewal_of, gift)
                       VALUES (?, ?, ?, ?, ?, ?, 'stars', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *""",
                    (str(uuid.uuid4()), paid.user_id, row["plan_id"], row["duration"], row["amount"], row["currency"],
                     status, now, now, now, paid.currency, str(paid.amount), cause, paid.charge_id,
                     None if first is None else first["id"], row["gift"])).fetchone()
            detail = {"payment_uuid": row["payment_uuid"], "plan": row["plan_id"], "charge_id": paid.charge_id,
                      "asked": f"{row['amount']} {row['currency']}", "paid": f"{paid.amount} {paid.currency}",
                      "renewal": row["renewal_of"] is not None}
            if not ok:
                return _mismatch(tx, row, now, cause, None, detail, admin_ids, paid.charge_id)
            start = None
            if paid.renews_at is not None and not row["gift"]:
                _note_star_subscription(tx, paid, subscription, row["plan_id"], now)
                # The period paid for began when Telegram charged (one period before the next
                # charge): a renewal caught up days later still ends when Telegram's does.
                start = min(now, paid.renews_at - row["duration"])
            return _paid(tx, row, now, cause, None, detail, referral_bonus, start)

    def claim_trial(self, user_id: int, plan_id: str, duration: int, now: int) -> int | None:
        """Start a free plan, once per member ever; the new expiry, or None if already used."""
        with self.transaction() as tx:
            cursor = tx.execute(
                "UPDATE members SET trial_used_at = ? WHERE user_id = ? AND trial_used_at IS NULL",
                (now, user_id),
            )
            if cursor.rowcount != 1:
                return None
            new_expiry = extend_subscription(tx, user_id, duration, now)
            _audit(tx, now, user_id, "trial_started", "bot", None, {"plan": plan_id, "expires_at": new_expiry,
                                                                    "duration": duration})
            enqueue(tx, Kind.ACTIVATED, user_id, {"plan": plan_id, "expires_at": new_expiry, "trial": True},
                    now, PRIORITY_NOW, dedupe_key=f"trial:{user_id}")
            return new_expiry

    # --- the lifecycle sweep ---

    def queue_reminders(self, now: int, points: tuple[int, ...], limit: int = 2000) -> int:
        """Queue the reminders due now: once per member, expiry and point.

        A point counts only if it falls after the member's last extension. When
        several points have passed (the bot was down), only the nearest is sent.
        """
        queued = 0
        with self.transaction() as tx:
            for point in sorted(points):
                rows = tx.execute(
                    """SELECT s.user_id, s.expires_at FROM subscriptions s
                       WHERE s.removed_for IS NOT s.expires_at
                         AND s.expires_at > ? AND s.expires_at <= ? AND s.expires_at - ? > s.updated_at
                         AND NOT EXISTS (SELECT 1 FROM reminders r WHERE r.user_id = s.user_id
                                         AND r.expires_at = s.expires_at AND r.point = ?)
                       LIMIT ?""",
                    (now, now + point, point, point, limit),
                ).fetchall()
                for row in rows:
                    for covered in (p for p in points if p >= point):
                        tx.execute("INSERT OR IGNORE INTO reminders (user_id, expires_at, point, sent_at) "
                                   "VALUES (?, ?, ?, ?)", (row["user_id"], row["expires_at"], covered, now))
                    queued += enqueue(tx, Kind.REMINDER, row["user_id"], {"expires_at": row["expires_at"],
                                      "point": point}, now, PRIORITY_NORMAL,
                                      dedupe_key=f"remind:{row['user_id']}:{row['expires_at']}:{point}")
        return queued

    def queue_expiries(self, now: int, grace: int, limit: int = 500) -> int:
        """Queue the removal of members whose time (plus grace) ran out, once per expiry; not while
        a Stars renewal is due (up to RENEWAL_WAIT after its date)."""
        with self.transaction() as tx:
            rows = tx.execute(
                """SELECT user_id, expires_at FROM subscriptions s
                   WHERE removed_for IS NOT expires_at AND expires_at <= ?
                     AND NOT EXISTS (SELECT 1 FROM star_subscriptions r WHERE r.user_id = s.user_id
                                       AND r.canceled_at IS NULL AND r.renews_at > ?
                                       AND r.renews_at <= s.expires_at + ?)
                   ORDER BY expires_at LIMIT ?""",
                # A Stars subscription Telegram is about to renew waits for its payment a day.
                # Only the expiry that renewal extends: one a refund brought earlier is not held.
                (now - grace, now - RENEWAL_WAIT, RENEWAL_WAIT, limit),
            ).fetchall()
            for row in rows:
                tx.execute("UPDATE subscriptions SET removed_for = expires_at WHERE user_id = ?", (row["user_id"],))
                _audit(tx, now, row["user_id"], "membership_expired", "scheduler",
                       detail={"expires_at": row["expires_at"]})
                # Once per expiry comes from removed_for, set in this transaction; an expiry that
                # comes back after a clock correction (undo_early_removals) is queued again.
                enqueue(tx, Kind.EXPIRE, row["user_id"], {"expires_at": row["expires_at"]}, now, PRIORITY_NORMAL,
                        pending_key=f"expire:{row['user_id']}")
        return len(rows)

    def undo_early_removals(self, now: int) -> int:
        """Expiries handled while the clock ran ahead, now in the future again: the member has
        time, so let them back in, and handle the expiry again when it really comes."""
        with self.transaction() as tx:
            rows = tx.execute(
                """UPDATE subscriptions SET removed_for = NULL
                   WHERE removed_for = expires_at AND expires_at > ? AND revoked_at IS NULL
                   RETURNING user_id, expires_at""",
                (now,),
            ).fetchall()
            for row in rows:
                _audit(tx, now, row["user_id"], "removal_undone", "scheduler",
                       detail={"expires_at": row["expires_at"], "why": "the expiry is in the future again"})
                enqueue(tx, Kind.WAY_IN, row["user_id"], {}, now, PRIORITY_NOW, pending_key=f"way_in:{row['user_id']}")
        return len(rows)

    def expiry_not_handled(self, user_id: int, expires_at: int) -> None:
        """A removal queued for this expiry found it not due yet (the clock had run ahead when
        it was queued): it comes again when it is really due. A renewed or revoked expiry is not
        this one, and is left as it is."""
        with self.transaction() as tx:
            tx.execute("UPDATE subscriptions SET removed_for = NULL WHERE user_id = ? AND removed_for = expires_at "
                       "AND expires_at = ? AND revoked_at IS NULL", (user_id, expires_at))

    def queue_declines(self, requested_before: int, now: int) -> int:
        """Decline join requests that waited too long for a payment."""
        with self.transaction() as tx:
            rows = tx.execute(
                "SELECT chat_id, user_id, requested_at FROM join_requests WHERE status = 'waiting' "
                "AND requested_at <= ?", (requested_before,),
            ).fetchall()
            for row in rows:
                tx.execute("UPDATE join_requests SET status = 'declined', decided_at = ? "
                           "WHERE chat_id = ? AND user_id = ?", (now, row["chat_id"], row["user_id"]))
                enqueue(tx, Kind.DECLINE, row["user_id"], {"chat_id": row["chat_id"]}, now, PRIORITY_NORMAL,
                        dedupe_key=f"decline:{row['chat_id']}:{row['user_id']}:{row['requested_at']}")
        return len(rows)

    def removal_done(self, message_id: int, user_id: int, expires_at: int, chats: list[int], now: int) -> None:
        """The member is out of every club chat: close the outbox row, audit it, and queue the notice."""
        with self.transaction() as tx:
            tx.execute("UPDATE outbox SET status = 'sent', done_at = ?, attempts = attempts + 1 "
                       "WHERE id = ? AND status = 'pending'", (now, message_id))
            _audit(tx, now, user_id, "member_removed", "scheduler", detail={"expires_at": expires_at, "chats": chats})
            if chats:
                enqueue(tx, Kind.EXPIRED_NOTICE, user_id, {"expires_at": expires_at, "chats": chats}, now,
                        PRIORITY_NORMAL, pending_key=f"expired:{user_id}")

    def alert_state(self, key: str, bad: bool, now: int, admin_ids: frozenset[int], kind: Kind,
                    payload: dict, announce_recovery: bool = True) -> bool:
        """Record a condition as bad or ok; alert admins once when it turns bad (and, if asked,
        once when it is ok again; a first look that finds it ok says nothing). True when an
        alert was queued. The state change and the alert are one transaction: that is what
        makes the alert once, whichever thread or process sees the change."""
        new = "bad" if bad else "ok"
        row = self.connect().execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        if row is not None and row[0] == new or row is None and not bad:
            return False  # the common case, without a write
        with self.transaction() as tx:
            row = tx.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            old = row[0] if row else None
            if old == new:
                return False
            tx.execute("INSERT INTO state (key, value) VALUES (?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, new))
            if not bad and (old is None or not announce_recovery):
                return False
            _audit(tx, now, None, f"{kind}_{new}", "scheduler", detail=payload)
            for admin_id in sorted(admin_ids):
                enqueue(tx, kind, admin_id, {**payload, "bad": bad}, now, PRIORITY_NOW)
            return True

    def network(self) -> str | None:
        """The network claim_network recorded; None before the first start."""
        row = self.connect().execute("SELECT value FROM state WHERE key = 'network'").fetchone()
        return row[0] if row else None

    def claim_network(self, network: str) -> str:
        """The Crypto Pay network this database's payments are on: recorded by the first start
        (an older database takes the network it is opened with), never changed after."""
        with self.transaction() as tx:
            tx.execute("INSERT INTO state (key, value) VALUES ('network', ?) ON CONFLICT (key) DO NOTHING",
                       (network,))
            return tx.execute("SELECT value FROM state WHERE key = 'network'").fetchone()[0]

    def put_state(self, key: str, value: str) -> None:
        with self.transaction() as tx:
            tx.execute("INSERT INTO state (key, value) VALUES (?, ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))

    def states(self, prefix: str) -> dict[str, str]:
        """The state rows whose key starts with `prefix`: a range on the primary key, not a scan."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        rows = self.connect().execute("SELECT key, value FROM state WHERE key >= ? AND key < ?",
                                      (prefix, end)).fetchall()
        return {row[0]: row[1] for row in rows}

    def delete_state(self, key: str, value: str) -> bool:
        """Delete a state row only if it still holds `value`, not one another process wrote since."""
        with self.transaction() as tx:
            return tx.execute("DELETE FROM state WHERE key = ? AND value = ?", (key, value)).rowcount == 1

    def webhook_seen_since(self, since: int) -> bool:
        """Whether a webhook for any invoice of ours has arrived at or after `since`."""
        row = self.connect().execute("SELECT EXISTS (SELECT 1 FROM invoices WHERE webhook_at >= ?)",
                                     (since,)).fetchone()
        return bool(row[0])

    def invoice_unreadable(self, invoice_id: int, error: str, now: int, admin_ids: frozenset[int]) -> bool:
        """A pending invoice that Crypto Pay returns in a form we cannot read: audit it and alert
        admins once per invoice (the audit row is the record that they were told). True when
        the alert was queued now."""
        with self.transaction() as tx:
            row = tx.execute("SELECT user_id FROM invoices WHERE invoice_id = ? AND status = 'pending'",
                             (invoice_id,)).fetchone()
            if row is None:
                return False
            told = tx.execute("SELECT 1 FROM audit WHERE user_id = ? AND action = 'invoice_unreadable' "
                              "AND invoice_id = ?", (row["user_id"], invoice_id)).fetchone()
            if told is not None:
                return False
            detail = {"invoice_id": invoice_id, "user_id": row["user_id"], "error": error}
            _audit(tx, now, row["user_id"], "invoice_unreadable", "poller", invoice_id, detail)
            for admin_id in sorted(admin_ids):
                enqueue(tx, Kind.ADMIN_INVOICE_UNREADABLE, admin_id, detail, now, PRIORITY_NOW,
                        dedupe_key=f"unreadable:{invoice_id}:{admin_id}")
            return True

    def record_unusable_webhook(self, body: bytes, error: str, now: int, keep: int = 1000) -> int:
        """Keep a correctly signed webhook we could not use, for the owner to look at; the
        newest `keep` only, so that a sender stuck on a bad format cannot fill the disk."""
        with self.transaction() as tx:
            record_id = tx.execute("INSERT INTO unusable_webhooks (received_at, error, body) VALUES (?, ?, ?) "
                                   "RETURNING id", (now, error, body)).fetchone()[0]
            tx.execute("DELETE FROM unusable_webhooks WHERE id <= ?", (record_id - keep,))
            return record_id

    def pull_back_future_work(self, now: int, longest_wait: int) -> int:
        """Rows due later than any wait ClubBot sets were queued while the clock ran ahead: due now
        (an activation queued then must not wait for the clock to catch up)."""
        with self.transaction() as tx:
            return tx.execute("UPDATE outbox SET next_attempt_at = ? WHERE status = 'pending' AND next_attempt_at > ?",
                              (now, now + longest_wait)).rowcount

    def chat_migrations(self) -> dict[int, int]:
        """Club groups upgraded to supergroups: old chat id -> new chat id."""
        return {int(key.partition(":")[2]): int(value) for key, value in self.states("migrated:").items()}

    def record_migration(self, old: int, new: int, now: int, admin_ids: frozenset[int]) -> bool:
        """A club group became a supergroup with a new id: follow it (the member's links and
        join requests move with it), and tell the admins once. False if already known."""
        with self.transaction() as tx:
            cursor = tx.execute("INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                                (f"migrated:{old}", str(new)))
            if cursor.rowcount != 1:
                return False
            # Links made for the old group do not lead into the new one: they are made again.
            tx.execute("DELETE FROM invite_links WHERE chat_id = ?", (old,))
            tx.execute("UPDATE OR IGNORE join_requests SET chat_id = ? WHERE chat_id = ?", (new, old))
            tx.execute("UPDATE OR IGNORE bans SET chat_id = ? WHERE chat_id = ?", (new, old))
            _audit(tx, now, None, "chat_migrated", "bot", detail={"from": old, "to": new})
            for admin_id in sorted(admin_ids):
                enqueue(tx, Kind.ADMIN_MIGRATED, admin_id, {"old": old, "new": new}, now, PRIORITY_NOW,
                        dedupe_key=f"migrated:{old}:{admin_id}")
            return True

    def retry_removals_now(self, now: int) -> None:
        """Removals that failed while the bot lacked its rights: due at once."""
        with self.transaction() as tx:
            tx.execute("UPDATE outbox SET next_attempt_at = ? "
                       "WHERE status = 'pending' AND kind IN (?, ?)", (now, Kind.EXPIRE, Kind.LIFT_BAN))

    # --- the owner's tools ---

    def find_member(self, ref: str) -> sqlite3.Row | None:
        """The one member with this Telegram id ('12345') or username ('@name', any case);
        AmbiguousMember when a username names several, rather than a guess among them."""
        rows = self.find_members(ref)
        if len(rows) > 1:
            raise AmbiguousMember(ref, rows)
        return rows[0] if rows else None

    def find_members(self, ref: str, limit: int = 10) -> list[sqlite3.Row]:
        """Members by Telegram id or username, last seen first. Several hold one username only
        in a database that an older version left with stale ones."""
        ref = ref.strip()
        conn = self.connect()
        if re.fullmatch(r"[0-9]{1,15}", ref):
            return conn.execute("SELECT * FROM members WHERE user_id = ?", (int(ref),)).fetchall()
        if re.fullmatch(r"@?[A-Za-z0-9_]{3,32}", ref):
            return conn.execute(
                """SELECT * FROM members WHERE username = ? COLLATE NOCASE
                   ORDER BY seen_at IS NULL, seen_at DESC, user_id LIMIT ?""",
                (ref.lstrip("@"), limit)).fetchall()
        return []

    def grant(self, user_id: int, duration: int, now: int, by: str, latest: int | None = None,
              command_key: str | None = None) -> int | None:
        """Give a member time by hand (stacking like a payment); return the new expiry, or None,
        changing nothing, when it would fall after `latest`. A command carried out before
        (`command_key`) changes nothing and returns the expiry as it is."""
        with self.transaction() as tx:
            if command_key is not None and tx.execute("SELECT 1 FROM commands WHERE key = ?",
                                                      (command_key,)).fetchone():
                return _expiry(tx, user_id)  # carried out before: asked for again after a kill
            if latest is not None and max(now, _expiry(tx, user_id) or now) + duration > latest:
                return None
            claim_command(tx, command_key, now)
            _ensure_member(tx, user_id, now)
            new_expiry = extend_subscription(tx, user_id, duration, now)
            _audit(tx, now, user_id, "granted", "admin", detail={"duration": duration, "by": by,
                                                                 "expires_at": new_expiry})
            enqueue(tx, Kind.GRANTED, user_id, {"duration": duration, "expires_at": new_expiry}, now, PRIORITY_NOW)
            return new_expiry

    def revoke(self, user_id: int, now: int, by: str, command_key: str | None = None) -> bool:
        """End a member's time now and queue the removal (no grace period); False if nothing to end.
        A command carried out before (`command_key`) changes nothing and returns True."""
        with self.transaction() as tx:
            if not claim_command(tx, command_key, now):
                return True
            row = tx.execute("SELECT expires_at, removed_for FROM subscriptions WHERE user_id = ?",
                             (user_id,)).fetchone()
            if row is None or (row["expires_at"] <= now and row["removed_for"] == row["expires_at"]):
                return False
            tx.execute("UPDATE subscriptions SET expires_at = ?, removed_for = ?, updated_at = ?, revoked_at = ? "
                       "WHERE user_id = ?", (now, now, now, now, user_id))
            _audit(tx, now, user_id, "revoked", "admin", detail={"by": by, "was_until": row["expires_at"]})
            enqueue(tx, Kind.EXPIRE, user_id, {"expires_at": now, "revoked": True}, now, PRIORITY_NOW,
                    dedupe_key=f"revoke:{user_id}:{now}")
            return True

    def command_done(self, key: str) -> bool:
        """Whether the command asked by message `key` was carried out (see claim_command)."""
        return self.connect().execute("SELECT 1 FROM commands WHERE key = ?", (key,)).fetchone() is not None

    def stats(self, now: int, days: int = 30) -> dict[str, Any]:
        conn = self.connect()
        one = lambda sql, *args: conn.execute(sql, args).fetchone()[0]  # noqa: E731
        since = now - days * 86400
        revenue: dict[str, Decimal] = {}
        for currency, amount, count in conn.execute(
                "SELECT currency, amount, count(*) FROM invoices WHERE status = 'paid' AND paid_at > ? "
                "GROUP BY currency, amount", (since,)):
            revenue[currency] = revenue.get(currency, Decimal(0)) + Decimal(amount) * count  # exact
        daily = [0] * days
        for day, count in conn.execute(
                "SELECT (paid_at - ?) / 86400, count(*) FROM invoices WHERE status = 'paid' AND paid_at > ? "
                "GROUP BY 1", (since, since)):
            daily[min(days - 1, day)] += count
        return {
            "members": one("SELECT count(*) FROM members"),
            "active": one(f"SELECT count(*) FROM subscriptions WHERE {ACTIVE} AND expires_at > ?", now),
            "expiring": one(f"SELECT count(*) FROM subscriptions WHERE {ACTIVE} AND expires_at > ? "
                            "AND expires_at <= ?", now, now + 7 * 86400),
            "pending": one("SELECT count(*) FROM invoices WHERE status = 'pending'"),
            "revenue": dict(sorted(revenue.items())),
            "daily": daily,
            "gifts": one("SELECT count(*) FROM gifts WHERE ready = 1"),
            "gifts_redeemed": one("SELECT count(*) FROM gifts WHERE redeemed_at IS NOT NULL"),
            "gifts_bought": one("SELECT count(*) FROM gifts WHERE invoice_row IS NOT NULL"),
            "referred": one("SELECT count(*) FROM members WHERE referred_by IS NOT NULL"),
            "referral_bonuses": one("SELECT count(*) FROM referral_bonuses WHERE duration > 0 "
                                    "AND taken_back_at IS NULL"),
            "referral_time": one("SELECT coalesce(sum(duration), 0) FROM referral_bonuses "
                                 "WHERE taken_back_at IS NULL"),
        }

    def member_invoices(self, user_id: int, limit: int = 20) -> list[sqlite3.Row]:
        return self.connect().execute(
            "SELECT * FROM invoices WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)).fetchall()

    def member_audit(self, user_id: int, limit: int = 20) -> list[sqlite3.Row]:
        return self.connect().execute(
            "SELECT * FROM audit WHERE user_id = ? ORDER BY id DESC LIMIT ?", (user_id, limit)).fetchall()

    def export_rows(self) -> Iterator[sqlite3.Row]:
        """Every member with each of their invoices (members without one: a row with no invoice)."""
        return self.connect().execute(
            """SELECT m.user_id, m.username, m.first_name, m.language, m.created_at, s.expires_at,
                      i.invoice_id, i.plan_id, i.amount, i.currency, i.status AS invoice_status,
                      i.created_at AS invoice_created_at, i.paid_at, i.paid_asset, i.paid_amount, i.applied_by,
                      c.name AS code, i.full_amount, g.short_id AS gift_link, m.referred_by, i.charge_id
               FROM members m
               LEFT JOIN subscriptions s ON s.user_id = m.user_id
               LEFT JOIN invoices i ON i.user_id = m.user_id AND i.status != 'creating'
               LEFT JOIN codes c ON c.id = i.code_id
               LEFT JOIN gifts g ON g.invoice_row = i.id
               ORDER BY m.user_id, i.id""")

    # --- discount codes ---

    def add_code(self, name: str, percent: int | None, off: Decimal | None, plans: tuple[str, ...],
                 max_uses: int | None, until_at: int | None, first_only: bool, now: int, by: str) -> bool:
        """Create a code; False if one of this name (in any case) exists."""
        with self.transaction() as tx:
            cursor = tx.execute(
                """INSERT INTO codes (name, percent, off, plans, max_uses, until_at, first_only, created_at,
                                      created_by)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING""",
                (name, percent, None if off is None else str(off), ",".join(plans), max_uses, until_at,
                 int(first_only), now, by))
            if cursor.rowcount != 1:
                return False
            _audit(tx, now, None, "code_created", by, detail={
                "code": name, "percent": percent, "off": off, "plans": ",".join(plans), "max_uses": max_uses,
                "until_at": until_at, "first_payment_only": first_only})
            return True

    def disable_code(self, name: str, now: int, by: str) -> bool:
        """Disable a code; False if there is no such code or it is disabled already."""
        with self.transaction() as tx:
            cursor = tx.execute("UPDATE codes SET disabled_at = ? WHERE name = ? AND disabled_at IS NULL",
                                (now, name))
            if cursor.rowcount != 1:
                return False
            _audit(tx, now, None, "code_disabled", by, detail={"code": name})
            return True

    def code(self, name: str) -> sqlite3.Row | None:
        """A code by name (any case), with its uses so far."""
        return self._codes("WHERE c.name = ?", name).fetchone()

    def code_by_id(self, code_id: int) -> sqlite3.Row | None:
        return self._codes("WHERE c.id = ?", code_id).fetchone()

    def codes(self) -> list[sqlite3.Row]:
        return self._codes("ORDER BY c.id").fetchall()

    def _codes(self, rest: str, *args: object) -> sqlite3.Cursor:
        """Codes with their uses so far (`uses`), as `rest` (a WHERE or ORDER BY) picks them."""
        return self.connect().execute(
            f"SELECT c.*, (SELECT count(*) FROM code_uses u WHERE u.code_id = c.id) AS uses FROM codes c {rest}", args)

    def code_revenue(self) -> dict[int, dict[str, Decimal]]:
        """Per code, what its applied payments brought, per currency (the discounted prices)."""
        revenue: dict[int, dict[str, Decimal]] = {}
        for code_id, currency, amount, count in self.connect().execute(
                "SELECT i.code_id, i.currency, i.amount, count(*) FROM code_uses u "
                "JOIN invoices i ON i.id = u.invoice_row GROUP BY 1, 2, 3"):
            per = revenue.setdefault(code_id, {})
            per[currency] = per.get(currency, Decimal(0)) + Decimal(amount) * count
        return revenue

    def has_paid(self, user_id: int) -> bool:
        return self.connect().execute("SELECT 1 FROM invoices WHERE user_id = ? AND status = 'paid' LIMIT 1",
                                      (user_id,)).fetchone() is not None

    def attach_code(self, user_id: int, code_id: int | None, until: int | None, now: int, how: str) -> None:
        """Attach a code to the member's next invoices until `until` (None: detach)."""
        with self.transaction() as tx:
            tx.execute("UPDATE members SET code_id = ?, code_until = ? WHERE user_id = ?", (code_id, until, user_id))
            if code_id is not None:
                _audit(tx, now, user_id, "code_attached", how, detail={"code_id": code_id, "until": until})

    def wrong_code_tries(self, user_id: int, since: int) -> int:
        return self.connect().execute("SELECT count(*) FROM code_tries WHERE user_id = ? AND at > ?",
                                      (user_id, since)).fetchone()[0]

    def wrong_code(self, user_id: int, name: str, now: int, how: str, forget_before: int) -> None:
        """Count a code that did not work (for the limit on tries), and audit it."""
        with self.transaction() as tx:
            _wrong_try(tx, user_id, now, forget_before)
            _audit(tx, now, user_id, "code_refused", how, detail={"code": name[:64]})

    # --- gift links ---

    def add_gifts(self, links: list[tuple[str, str]], plan_id: str, duration: int, now: int, by: str,
                  command_key: str | None = None, ready: bool = True) -> bool:
        """Store gift links as (token hash, short id), all or none; False, storing none, when the
        command `command_key` was carried out before. Not `ready`: they do not work until
        gift_batch_ready(command_key)."""
        with self.transaction() as tx:
            if not claim_command(tx, command_key, now):
                return False
            tx.executemany("INSERT INTO gifts (token_hash, short_id, plan_id, duration, created_at, created_by, "
                           "ready, batch) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(token_hash, short_id, plan_id, duration, now, by, int(ready), command_key)
                            for token_hash, short_id in links])
            _audit(tx, now, None, "gifts_created", by, detail={"plan": plan_id, "count": len(links)})
            return True

    def gift_batch_ready(self, command_key: str) -> int:
        """The links of an admin's batch work from now on (its file was sent); how many changed."""
        with self.transaction() as tx:
            return tx.execute("UPDATE gifts SET ready = 1 WHERE batch = ? AND ready = 0", (command_key,)).rowcount

    def drop_gift_batch(self, command_key: str) -> int:
        """An admin's batch whose file could not be sent: its links are deleted; how many."""
        with self.transaction() as tx:
            return tx.execute("DELETE FROM gifts WHERE batch = ? AND ready = 0", (command_key,)).rowcount

    def redeem_gift(self, token_hash: str, user_id: int, now: int) -> tuple[str, int | None]:
        """Give the gift's time to the first member to open its link: ("redeemed", its duration);
        ("used", None) when it was redeemed before (by anyone), ("unknown", None) for no such gift."""
        with self.transaction() as tx:
            gift = tx.execute("SELECT * FROM gifts WHERE token_hash = ? AND ready = 1", (token_hash,)).fetchone()
            if gift is None:
                return "unknown", None
            if tx.execute("UPDATE gifts SET redeemed_by = ?, redeemed_at = ? WHERE token_hash = ? "
                          "AND redeemed_at IS NULL", (user_id, now, token_hash)).rowcount != 1:
                return "used", None
            _ensure_member(tx, user_id, now)
            new_expiry = extend_subscription(tx, user_id, gift["duration"], now)
            _audit(tx, now, user_id, "gift_redeemed", "link", detail={
                "gift": gift["short_id"], "plan": gift["plan_id"], "duration": gift["duration"],
                "expires_at": new_expiry})
            enqueue(tx, Kind.GRANTED, user_id, {"duration": gift["duration"], "expires_at": new_expiry,
                                                "gift": gift["short_id"]}, now, PRIORITY_NOW)
            if gift["invoice_row"] is not None:  # bought by a member: the buyer hears it was taken
                buyer = tx.execute("SELECT user_id FROM invoices WHERE id = ?", (gift["invoice_row"],)).fetchone()
                enqueue(tx, Kind.GIFT_REDEEMED, buyer["user_id"],
                        {"gift": gift["short_id"], "plan": gift["plan_id"], "user_id": user_id}, now,
                        PRIORITY_NORMAL, dedupe_key=f"gift_redeemed:{gift['short_id']}")
            return "redeemed", gift["duration"]

    def wrong_gift(self, user_id: int, now: int, forget_before: int) -> None:
        """Count a gift link that does not work toward the codes' limit on tries, and audit it."""
        with self.transaction() as tx:
            _wrong_try(tx, user_id, now, forget_before)
            _audit(tx, now, user_id, "gift_refused", "link")

    def gifts(self, bought_by: int | None = None) -> list[sqlite3.Row]:
        """Every gift link with the member who redeemed it (if any), and who bought it (NULL:
        made by the owner); only those `bought_by` bought, if given."""
        where = "" if bought_by is None else "AND i.user_id = ?"
        return self.connect().execute(
            f"""SELECT g.short_id, g.plan_id, g.created_at, g.redeemed_by, g.redeemed_at, m.username,
                       i.user_id AS bought_by
                FROM gifts g LEFT JOIN members m ON m.user_id = g.redeemed_by
                LEFT JOIN invoices i ON i.id = g.invoice_row WHERE g.ready = 1 {where} ORDER BY g.id""",
            () if bought_by is None else (bought_by,)).fetchall()

    def resend_gift_links(self, user_id: int, now: int) -> int:
        """Queue again the links of gifts the member bought that could not be delivered (they had
        blocked the bot, say); how many. Asked at every /start: a read first (the index of such
        rows is tiny), a write only when there is one."""
        if self.connect().execute("SELECT 1 FROM outbox WHERE chat_id = ? AND kind = 'gift_bought' "
                                  "AND status = 'failed' LIMIT 1", (user_id,)).fetchone() is None:
            return 0
        with self.transaction() as tx:
            return tx.execute(
                """UPDATE outbox SET status = 'pending', next_attempt_at = ?, done_at = NULL, attempts = 0
                   WHERE chat_id = ? AND kind = 'gift_bought' AND status = 'failed'""", (now, user_id)).rowcount

    # --- Telegram Stars ---

    def star_subscription(self, user_id: int) -> sqlite3.Row | None:
        """The member's latest Stars subscription (renewing or cancelled), if any."""
        return self.connect().execute("SELECT * FROM star_subscriptions WHERE user_id = ? "
                                      "ORDER BY renews_at DESC LIMIT 1", (user_id,)).fetchone()

    def expire_star_invoices(self, now: int) -> int:
        """Stars invoices past their time: Telegram's link would still take the money, so
        pre-checkout refuses an expired one (the member gets a new one); how many."""
        with self.transaction() as tx:
            return tx.execute("UPDATE invoices SET status = 'expired' WHERE status = 'pending' "
                              "AND currency_type = 'stars' AND expires_at <= ?", (now,)).rowcount

    def renewing_subscription(self, user_id: int, now: int) -> sqlite3.Row | None:
        """The member's Stars subscription that Telegram will charge again (not cancelled, due from now)."""
        return self.connect().execute(
            "SELECT * FROM star_subscriptions WHERE user_id = ? AND canceled_at IS NULL AND renews_at >= ? "
            "ORDER BY renews_at DESC LIMIT 1", (user_id, now)).fetchone()

    def set_star_renewal(self, charge_id: str, canceled: bool, now: int, by: str) -> bool:
        """Record that a Stars subscription was cancelled (or resumed); False if it already was."""
        with self.transaction() as tx:
            row = tx.execute(
                "UPDATE star_subscriptions SET canceled_at = ?, updated_at = ? WHERE charge_id = ? "
                "AND (canceled_at IS NULL) = ? RETURNING user_id",
                (now if canceled else None, now, charge_id, int(canceled))).fetchone()
            if row is None:
                return False
            _audit(tx, now, row["user_id"], "renewal_canceled" if canceled else "renewal_resumed", by,
                   detail={"charge_id": charge_id})
            return True

    # --- refunds ---

    def payment(self, ref: str) -> sqlite3.Row | None:
        """A payment by what an admin types: its Crypto Pay invoice id, or its Stars charge id."""
        ref = ref.strip()
        conn = self.connect()
        if re.fullmatch(r"[0-9]{1,18}", ref):
            row = conn.execute("SELECT * FROM invoices WHERE invoice_id = ?", (int(ref),)).fetchone()
            if row is not None:
                return row
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", ref):
            return None
        return conn.execute("SELECT * FROM invoices WHERE charge_id = ?", (ref,)).fetchone()

    def bought_gift(self, invoice_row: int) -> sqlite3.Row | None:
        """The gift link a payment bought (with who redeemed it), if it bought one."""
        return self.connect().execute("SELECT * FROM gifts WHERE invoice_row = ?", (invoice_row,)).fetchone()

    def bonus_earned_by(self, invoice_row: int) -> sqlite3.Row | None:
        """The referral bonus a payment earned, while it stands (given, not taken back)."""
        return self.connect().execute(
            "SELECT * FROM referral_bonuses WHERE invoice_row = ? AND taken_back_at IS NULL AND duration > 0",
            (invoice_row,)).fetchone()

    def subscription_of_payment(self, row: sqlite3.Row) -> sqlite3.Row | None:
        """The Stars subscription a payment (its first, or a renewal) belongs to, if any."""
        return self.connect().execute(
            """SELECT s.* FROM star_subscriptions s JOIN invoices i ON i.charge_id = s.charge_id
               WHERE i.id = ?""", (row["renewal_of"] if row["renewal_of"] is not None else row["id"],)).fetchone()

    def refund_of(self, invoice_row: int) -> sqlite3.Row | None:
        return self.connect().execute("SELECT * FROM refunds WHERE invoice_row = ?", (invoice_row,)).fetchone()

    def start_refund(self, invoice_row: int, method: str, asset: str, amount: Decimal, spend_id: str | None,
                     by: str, now: int) -> bool:
        """Claim a payment's refund before the money is asked to go back: a new one, or one refused
        before, is now 'sending' (True); one 'sending' (a retry after a kill) or 'done' stays as
        it is (False)."""
        with self.transaction() as tx:
            changed = tx.execute(
                """INSERT INTO refunds (invoice_row, status, method, asset, amount, spend_id, by, started_at)
                   VALUES (?, 'sending', ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (invoice_row) DO UPDATE SET status = 'sending', error = NULL, by = excluded.by
                   WHERE refunds.status = 'failed'""",
                (invoice_row, method, asset, str(amount), spend_id, by, now)).rowcount
            if changed:
                user = tx.execute("SELECT user_id FROM invoices WHERE id = ?", (invoice_row,)).fetchone()
                _audit(tx, now, user["user_id"], "refund_started", by,
                       detail={"invoice_row": invoice_row, "method": method, "amount": f"{amount} {asset}"})
            return bool(changed)

    def refund_refused(self, invoice_row: int, error: str, now: int) -> None:
        """Telegram or Crypto Pay refused the refund: nothing went back; it may be tried again."""
        with self.transaction() as tx:
            row = tx.execute("UPDATE refunds SET status = 'failed', error = ? WHERE invoice_row = ? "
                             "AND status = 'sending' RETURNING by", (error[:500], invoice_row)).fetchone()
            if row is not None:
                user = tx.execute("SELECT user_id FROM invoices WHERE id = ?", (invoice_row,)).fetchone()
                _audit(tx, now, user["user_id"], "refund_refused", row["by"],
                       detail={"invoice_row": invoice_row, "error": error[:500]})

    def finish_refund(self, invoice_row: int, now: int, transfer_id: int | None = None) -> RefundDone | None:
        """The money went back: in one transaction, the refund is done, the payment marked
        refunded, and the time it bought taken back (never more than is left; the member is
        removed if nothing is), from the member, from whoever took a gift it bought, and a
        referral bonus it earned from the referrer. What was taken from whom, or None when the
        refund was finished before."""
        with self.transaction() as tx:
            refund = tx.execute("UPDATE refunds SET status = 'done', done_at = ?, transfer_id = ? "
                                "WHERE invoice_row = ? AND status = 'sending' RETURNING *",
                                (now, transfer_id, invoice_row)).fetchone()
            if refund is None:
                return None
            row = tx.execute("UPDATE invoices SET status = 'refunded' WHERE id = ? RETURNING *",
                             (invoice_row,)).fetchone()
            done = _refund_time(tx, row, now)
            taken, holder = done.taken, done.holder
            tx.execute("UPDATE refunds SET time_taken = ? WHERE invoice_row = ?", (taken, invoice_row))
            _audit(tx, now, row["user_id"], "refunded", refund["by"], row["invoice_id"], {
                "payment_uuid": row["payment_uuid"], "charge_id": row["charge_id"], "method": refund["method"],
                "amount": f"{refund['amount']} {refund['asset']}", "time_taken": taken, "from": holder,
                "transfer_id": transfer_id})
            enqueue(tx, Kind.REFUNDED, row["user_id"], {"amount": refund["amount"], "asset": refund["asset"],
                    "time_taken": taken, "gift": bool(row["gift"])}, now, PRIORITY_NOW,
                    dedupe_key=f"refunded:{invoice_row}")
            return done

    # --- referrals ---

    def member_ref(self, user_id: int) -> str:
        """The member's public referral code, made the first time it is asked for."""
        for _ in range(10):
            row = self.connect().execute("SELECT ref FROM members WHERE user_id = ?", (user_id,)).fetchone()
            if row is None:
                raise LookupError(f"member {user_id} is not known")
            if row["ref"] is not None:
                return row["ref"]
            try:
                with self.transaction() as tx:
                    tx.execute("UPDATE members SET ref = ? WHERE user_id = ? AND ref IS NULL",
                               (random_code(REF_LENGTH), user_id))
            except sqlite3.IntegrityError:  # another member's already (1 in 2^48): another one
                continue
        raise RuntimeError(f"no free referral code for member {user_id}")

    def attribute_referral(self, user_id: int, ref: str, now: int) -> str:
        """A member opened a referral link: "referred" when it counts, else why not: "unknown"
        (no such code), "self", "already" (referred before: the first link wins), "member" (has
        had time or paid before) or "loop" (the referrer was referred, directly or not, by this
        member)."""
        with self.transaction() as tx:
            referrer = tx.execute("SELECT user_id FROM members WHERE ref = ?", (ref,)).fetchone()
            if referrer is None:
                return "unknown"
            referrer_id = referrer["user_id"]
            if referrer_id == user_id:
                return "self"
            me = tx.execute("SELECT referred_by FROM members WHERE user_id = ?", (user_id,)).fetchone()
            if me is not None and me["referred_by"] is not None:
                return "already"
            # (has_paid reads on this thread's connection: inside this transaction)
            if tx.execute("SELECT 1 FROM subscriptions WHERE user_id = ?", (user_id,)).fetchone() or \
                    self.has_paid(user_id):
                return "member"
            if _refers_back(tx, referrer_id, user_id):
                return "loop"
            _ensure_member(tx, user_id, now)
            tx.execute("UPDATE members SET referred_by = ?, referred_at = ? WHERE user_id = ? AND referred_by IS NULL",
                       (referrer_id, now, user_id))
            _audit(tx, now, user_id, "referred", "link", detail={"referrer": referrer_id})
            return "referred"

    def referral_earnings(self, user_id: int) -> tuple[int, int]:
        """(referred members whose payment earned a bonus, the time earned) for a referrer;
        bonuses taken back with a refund do not count."""
        row = self.connect().execute(
            "SELECT count(*), coalesce(sum(duration), 0) FROM referral_bonuses "
            "WHERE referrer_id = ? AND duration > 0 AND taken_back_at IS NULL", (user_id,)).fetchone()
        return row[0], row[1]

    def top_referrers(self, limit: int = 10) -> list[sqlite3.Row]:
        """Referrers by bonuses earned, then by members referred: id, username, referred, paid, earned."""
        return self.connect().execute(
            """SELECT r.referrer_id AS user_id, m.username, r.referred,
                      (SELECT count(*) FROM referral_bonuses b WHERE b.referrer_id = r.referrer_id
                         AND b.taken_back_at IS NULL) AS paid,
                      (SELECT coalesce(sum(b.duration), 0) FROM referral_bonuses b
                       WHERE b.referrer_id = r.referrer_id AND b.taken_back_at IS NULL) AS earned
               FROM (SELECT referred_by AS referrer_id, count(*) AS referred FROM members
                     WHERE referred_by IS NOT NULL GROUP BY referred_by) r
               LEFT JOIN members m ON m.user_id = r.referrer_id
               ORDER BY paid DESC, referred DESC, r.referrer_id LIMIT ?""", (limit,)).fetchall()

    def start_broadcast(self, admin_chat: int, text: str, now: int,
                        command_key: str | None = None) -> tuple[int, int] | None:
        """Queue `text` to every member with time left, and the admin's progress message first;
        return (broadcast id, how many), or None when this command was carried out before."""
        with self.transaction() as tx:
            if not claim_command(tx, command_key, now):
                return None
            broadcast_id = tx.execute(
                "INSERT INTO broadcasts (admin_chat, text, total, created_at) VALUES (?, ?, 0, ?)",
                (admin_chat, text, now)).lastrowid
            users = [row[0] for row in tx.execute(
                f"SELECT user_id FROM subscriptions WHERE {ACTIVE} AND expires_at > ? ORDER BY user_id", (now,))]
            payload = json.dumps({"broadcast_id": broadcast_id}, sort_keys=True)
            tx.executemany(
                "INSERT INTO outbox (kind, chat_id, payload, priority, created_at, next_attempt_at, dedupe_key) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(Kind.BROADCAST, user, payload, PRIORITY_BULK, now, now, f"broadcast:{broadcast_id}:{user}")
                 for user in users])
            tx.execute("UPDATE broadcasts SET total = ?, finished_at = CASE WHEN ? = 0 THEN ? END WHERE id = ?",
                       (len(users), len(users), now, broadcast_id))
            _audit(tx, now, None, "broadcast", "admin", detail={"broadcast_id": broadcast_id,
                                                                "recipients": len(users)})
            enqueue(tx, Kind.BROADCAST_STARTED, admin_chat, {"broadcast_id": broadcast_id}, now, PRIORITY_NOW,
                    dedupe_key=f"broadcast_started:{broadcast_id}")
        return broadcast_id, len(users)

    def set_broadcast_message(self, broadcast_id: int, message_id: int) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE broadcasts SET message_id = ? WHERE id = ?", (message_id, broadcast_id))

    def broadcast(self, broadcast_id: int) -> sqlite3.Row | None:
        return self.connect().execute("SELECT * FROM broadcasts WHERE id = ?", (broadcast_id,)).fetchone()

    def backup(self, target: Path, progress=None) -> None:
        """sqlite's online backup: a consistent copy while the bot runs."""
        destination = sqlite3.connect(target)
        try:
            self.connect().backup(destination, pages=1024, progress=progress)
        finally:
            destination.close()

    # --- join requests and invite links ---

    def record_join_request(self, chat_id: int, user_id: int, user_chat_id: int | None, now: int) -> None:
        with self.transaction() as tx:
            tx.execute(
                """INSERT INTO join_requests (chat_id, user_id, user_chat_id, requested_at, status)
                   VALUES (?, ?, ?, ?, 'waiting')
                   ON CONFLICT (chat_id, user_id) DO UPDATE SET
                     user_chat_id = excluded.user_chat_id, requested_at = excluded.requested_at,
                     status = 'waiting', decided_at = NULL""",
                (chat_id, user_id, user_chat_id, now),
            )

    def waiting_join_chats(self, user_id: int) -> list[int]:
        rows = self.connect().execute(
            "SELECT chat_id FROM join_requests WHERE user_id = ? AND status = 'waiting'", (user_id,)
        ).fetchall()
        return [row[0] for row in rows]

    def decide_join_request(self, chat_id: int, user_id: int, status: str, now: int) -> None:
        with self.transaction() as tx:
            tx.execute(
                "UPDATE join_requests SET status = ?, decided_at = ? WHERE chat_id = ? AND user_id = ?",
                (status, now, chat_id, user_id),
            )

    def invite_link(self, user_id: int, chat_id: int) -> str | None:
        row = self.connect().execute(
            "SELECT link FROM invite_links WHERE user_id = ? AND chat_id = ?", (user_id, chat_id)
        ).fetchone()
        return row[0] if row else None

    def save_invite_link(self, user_id: int, chat_id: int, link: str, now: int) -> None:
        with self.transaction() as tx:
            tx.execute(
                """INSERT INTO invite_links (user_id, chat_id, link, created_at) VALUES (?, ?, ?, ?)
                   ON CONFLICT (user_id, chat_id) DO UPDATE SET
                     link = excluded.link, created_at = excluded.created_at""",
                (user_id, chat_id, link, now),
            )

    # --- outbox ---

    def enqueue(self, kind: Kind, chat_id: int, payload: dict, now: int,
                priority: int = PRIORITY_NORMAL, dedupe_key: str | None = None,
                pending_key: str | None = None) -> bool:
        with self.transaction() as tx:
            return enqueue(tx, kind, chat_id, payload, now, priority, dedupe_key, pending_key)

    def due_messages(self, now: int, limit: int = 50) -> list[sqlite3.Row]:
        """What is due, in fair turns: within a priority, every recipient's first row comes
        before anyone's second, so one recipient's pile cannot hold up the others."""
        return self.connect().execute(
            """SELECT * FROM (
                   SELECT *, row_number() OVER (PARTITION BY chat_id ORDER BY priority, next_attempt_at, id) AS turn
                   FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?)
               ORDER BY priority, turn, next_attempt_at, id LIMIT ?""",
            (now, limit),
        ).fetchall()

    def next_message_due(self) -> int | None:
        row = self.connect().execute(
            "SELECT min(next_attempt_at) FROM outbox WHERE status = 'pending'"
        ).fetchone()
        return row[0]

    def message_done(self, message_id: int, status: str, now: int, error: str | None = None) -> None:
        """Close an outbox row as sent or failed (a broadcast's counts move in the same transaction)."""
        with self.transaction() as tx:
            row = tx.execute(
                """UPDATE outbox SET status = ?, done_at = ?, attempts = attempts + 1, last_error = ?
                   WHERE id = ? AND status = 'pending' RETURNING kind, payload""",
                (status, now, error, message_id),
            ).fetchone()
            if row is not None and row["kind"] == Kind.GIFT_BOUGHT and status == "sent":
                payload = json.loads(row["payload"])
                payload.pop(GIFT_SECRET, None)  # the buyer has the link; the database keeps none
                tx.execute("UPDATE outbox SET payload = ? WHERE id = ?", (json.dumps(payload, sort_keys=True),
                                                                           message_id))
            if row is not None and row["kind"] == Kind.BROADCAST:
                column = "sent" if status == "sent" else "failed"
                tx.execute(f"""UPDATE broadcasts SET {column} = {column} + 1,
                                 finished_at = CASE WHEN sent + failed + 1 >= total THEN ? END
                               WHERE id = ?""", (now, json.loads(row["payload"])["broadcast_id"]))

    def message_retry(self, message_id: int, next_attempt_at: int, error: str, count_attempt: bool = True) -> None:
        with self.transaction() as tx:
            tx.execute(
                """UPDATE outbox SET next_attempt_at = ?, last_error = ?, attempts = attempts + ?
                   WHERE id = ? AND status = 'pending'""",
                (next_attempt_at, error, 1 if count_attempt else 0, message_id),
            )

    # --- bans ClubBot made ---

    def ban_started(self, chat_id: int, user_id: int, now: int) -> None:
        """Recorded before the ban is asked for, so that its unban follows whatever happens."""
        with self.transaction() as tx:
            tx.execute("INSERT INTO bans (chat_id, user_id, banned_at) VALUES (?, ?, ?) "
                       "ON CONFLICT (chat_id, user_id) DO NOTHING", (chat_id, user_id, now))

    def ban_lifted(self, chat_id: int, user_id: int) -> None:
        with self.transaction() as tx:
            tx.execute("DELETE FROM bans WHERE chat_id = ? AND user_id = ?", (chat_id, user_id))

    def our_bans(self, user_id: int) -> list[int]:
        """The chats where ClubBot banned this member and has not lifted the ban yet."""
        rows = self.connect().execute("SELECT chat_id FROM bans WHERE user_id = ? ORDER BY chat_id",
                                      (user_id,)).fetchall()
        return [row[0] for row in rows]

    # --- Telegram updates (the inbox) ---

    def store_updates(self, updates: list[tuple[int, int | None, str]], now: int) -> list[int]:
        """Keep fetched updates (update_id, member, JSON) before they are confirmed to Telegram;
        return the ids that are new (one fetched again after a restart is not)."""
        fresh: list[int] = []
        with self.transaction() as tx:
            for update_id, member_id, body in updates:
                cursor = tx.execute(
                    "INSERT INTO updates (update_id, member_id, body, received_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (update_id) DO NOTHING", (update_id, member_id, body, now))
                if cursor.rowcount == 1:
                    fresh.append(update_id)
        return fresh

    def pending_updates(self) -> list[sqlite3.Row]:
        return self.connect().execute(
            "SELECT update_id, member_id, body FROM updates WHERE status = 'pending' ORDER BY update_id").fetchall()

    def update_done(self, update_id: int, now: int, status: str = "done") -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE updates SET status = ?, done_at = ? WHERE update_id = ? AND status = 'pending'",
                       (status, now, update_id))

    def forget_updates(self, done_before: int) -> int:
        """Handled updates are kept a while (Telegram may send one again after a restart), then dropped."""
        with self.transaction() as tx:
            return tx.execute("DELETE FROM updates WHERE status != 'pending' AND done_at < ?",
                              (done_before,)).rowcount

    # --- audit ---

    def audit(self, now: int, user_id: int | None, action: str, cause: str,
              invoice_id: int | None = None, detail: dict | None = None) -> None:
        with self.transaction() as tx:
            _audit(tx, now, user_id, action, cause, invoice_id, detail)


class AmbiguousMember(LookupError):
    """A username that more than one member row holds; `rows` are the candidates."""

    def __init__(self, ref: str, rows: list[sqlite3.Row]):
        super().__init__(f"{ref} names {len(rows)} members")
        self.ref = ref
        self.rows = rows


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    NOT_OURS = "not_ours"
    MISMATCH = "mismatch"


@dataclass(frozen=True)
class RefundDone:
    """What a finished refund took back: the time, from whom (None: a gift no one took), and
    whether that left them without time (they are being removed)."""

    taken: int
    holder: int | None
    removed: bool


@dataclass(frozen=True)
class StarPayment:
    """A Telegram Stars payment, as successful_payment or getStarTransactions tells it."""

    user_id: int
    payload: str  # the invoice's payment_uuid
    charge_id: str  # telegram_payment_charge_id: one per payment, renewals included
    amount: int
    currency: str = STARS
    renews_at: int | None = None  # a subscription's next charge (subscription_expiration_date)
    first_recurring: bool = False  # the first payment of a subscription


@dataclass(frozen=True)
class ApplyResult:
    outcome: Outcome
    user_id: int | None = None
    expires_at: int | None = None
    gift: str | None = None  # a plan bought as a gift: the short id of the link it made


# --- helpers that run inside a caller's transaction ---

def enqueue(tx: sqlite3.Connection, kind: Kind, chat_id: int, payload: dict, now: int,
            priority: int = PRIORITY_NORMAL, dedupe_key: str | None = None,
            pending_key: str | None = None) -> bool:
    """Queue Telegram work; False if a row with this dedupe_key exists (ever), or one with
    this pending_key is still waiting (duplicate requests collapse into it). A kind that
    is not a Kind raises ValueError, and the caller's transaction rolls back."""
    kind = Kind(kind)
    cursor = tx.execute(
        """INSERT INTO outbox (kind, chat_id, payload, priority, created_at, next_attempt_at, dedupe_key,
                               pending_key)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
           ON CONFLICT (pending_key) WHERE status = 'pending' AND pending_key IS NOT NULL DO NOTHING""",
        (kind, chat_id, json.dumps(payload, sort_keys=True), priority, now, now, dedupe_key, pending_key),
    )
    return cursor.rowcount == 1


def claim_command(tx: sqlite3.Connection, key: str | None, now: int) -> bool:
    """Record that the command asked by message `key` is carried out in this transaction;
    False if it was before (the same update handled again after a kill). No key: True."""
    if key is None:
        return True
    return tx.execute("INSERT INTO commands (key, at) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                      (key, now)).rowcount == 1


def extend_subscription(tx: sqlite3.Connection, user_id: int, duration: int, now: int,
                        start: int | None = None) -> int:
    """New expiry = max(start, current expiry) + duration: early renewal stacks, late starts at
    `start` (now, unless the time paid for began earlier: a Stars renewal caught up late)."""
    return tx.execute(
        """INSERT INTO subscriptions (user_id, expires_at, period_start, updated_at) VALUES (?1, ?4 + ?3, ?4, ?2)
           ON CONFLICT (user_id) DO UPDATE SET
             period_start = CASE WHEN expires_at > ?4 AND revoked_at IS NULL THEN period_start ELSE ?4 END,
             expires_at = CASE WHEN revoked_at IS NULL THEN max(expires_at, ?4) ELSE ?4 END + ?3,
             updated_at = ?2,
             revoked_at = NULL
           RETURNING expires_at""",
        (user_id, now, duration, now if start is None else start),
    ).fetchone()[0]


def _ensure_member(tx: sqlite3.Connection, user_id: int, now: int) -> None:
    """A member row for someone given time or attributed before they wrote to the bot."""
    tx.execute("INSERT INTO members (user_id, uuid, created_at) VALUES (?, ?, ?) ON CONFLICT (user_id) DO NOTHING",
               (user_id, str(uuid.uuid4()), now))


def _wrong_try(tx: sqlite3.Connection, user_id: int, now: int, forget_before: int) -> None:
    """One wrong code or gift link, for the limit on tries; the ones out of the window are forgotten."""
    tx.execute("DELETE FROM code_tries WHERE user_id = ? AND at <= ?", (user_id, forget_before))
    tx.execute("INSERT INTO code_tries (user_id, at) VALUES (?, ?)", (user_id, now))


def _record_code_use(tx: sqlite3.Connection, row: sqlite3.Row, now: int, cause: str, invoice_id: int) -> None:
    """A discounted payment applied: its code's use, once (the invoice steps to paid once, and
    the row's key is the invoice). Recorded whatever the code's limit, window or state say now:
    they were checked when the invoice was made, and the member paid the price shown."""
    if tx.execute("INSERT INTO code_uses (invoice_row, code_id, user_id, at) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (invoice_row) DO NOTHING",
                  (row["id"], row["code_id"], row["user_id"], now)).rowcount == 1:
        _audit(tx, now, row["user_id"], "code_used", cause, invoice_id,
               {"code_id": row["code_id"], "plan": row["plan_id"], "paid": f"{row['amount']} {row['currency']}",
                "full_amount": f"{row['full_amount']} {row['currency']}"})


def gift_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def _make_bought_gift(tx: sqlite3.Connection, row: sqlite3.Row, now: int, cause: str, invoice_id: int,
                      detail: dict[str, Any]) -> str:
    """A plan bought as a gift was paid: its link, made once (the invoice steps to paid once,
    and gifts_invoice is unique), and sent to the buyer; its short id. The token travels in the
    message only, which forgets it once sent (message_done)."""
    token = random_code(GIFT_TOKEN_LENGTH)
    digest = gift_token_hash(token)
    tx.execute("INSERT INTO gifts (token_hash, short_id, plan_id, duration, created_at, created_by, invoice_row) "
               "VALUES (?, ?, ?, ?, ?, ?, ?)", (digest, digest[:GIFT_SHORT_ID], row["plan_id"], row["duration"],
                                                now, f"member:{row['user_id']}", row["id"]))
    _audit(tx, now, row["user_id"], "gift_bought", cause, invoice_id,
           {**detail, "gift": digest[:GIFT_SHORT_ID], "duration": row["duration"]})
    enqueue(tx, Kind.GIFT_BOUGHT, row["user_id"], {GIFT_SECRET: token, "gift": digest[:GIFT_SHORT_ID],
            "plan": row["plan_id"], "duration": row["duration"]}, now, PRIORITY_NOW)
    return digest[:GIFT_SHORT_ID]


def _refers_back(tx: sqlite3.Connection, referrer_id: int, user_id: int) -> bool:
    """Whether `user_id` is among those who referred `referrer_id`, however far up (A refers B,
    B refers A would be a loop). The chain has no loop (none is ever made), so the walk ends."""
    seen: set[int] = set()
    current: int | None = referrer_id
    while current is not None and current not in seen:
        if current == user_id:
            return True
        seen.add(current)
        row = tx.execute("SELECT referred_by FROM members WHERE user_id = ?", (current,)).fetchone()
        current = row["referred_by"] if row else None
    return False


def _referral_bonus(tx: sqlite3.Connection, row: sqlite3.Row, now: int, cause: str, invoice_id: int,
                    bonus: int) -> None:
    """A member's own payment was applied: if it is the first, and they were referred, the
    referrer earns `bonus` (at most the time the payment bought), once per referred member (the
    key of referral_bonuses), with the way in and a message. A referrer whose time an admin
    revoked earns nothing (recorded, so that it is not given by a later payment either)."""
    user_id = row["user_id"]
    member = tx.execute("SELECT referred_by FROM members WHERE user_id = ?", (user_id,)).fetchone()
    if member is None or member["referred_by"] is None:
        return
    if tx.execute("SELECT 1 FROM invoices WHERE user_id = ? AND status = 'paid' AND gift = 0 AND id != ? LIMIT 1",
                  (user_id, row["id"])).fetchone():
        return  # not their first payment: one before was made while the programme was off
    referrer_id = member["referred_by"]
    bonus = min(bonus, row["duration"])  # spare accounts buying the shortest plan earn no more than it gives
    revoked = tx.execute("SELECT 1 FROM subscriptions WHERE user_id = ? AND revoked_at IS NOT NULL",
                         (referrer_id,)).fetchone() is not None
    if tx.execute("INSERT INTO referral_bonuses (referred_id, referrer_id, invoice_row, duration, at) "
                  "VALUES (?, ?, ?, ?, ?) ON CONFLICT (referred_id) DO NOTHING",
                  (user_id, referrer_id, row["id"], 0 if revoked else bonus, now)).rowcount != 1:
        return
    detail = {"referred": user_id, "duration": bonus}
    if revoked:
        _audit(tx, now, referrer_id, "referral_bonus_withheld", cause, invoice_id, {**detail, "why": "revoked"})
        return
    new_expiry = extend_subscription(tx, referrer_id, bonus, now)
    _audit(tx, now, referrer_id, "referral_bonus", cause, invoice_id, {**detail, "expires_at": new_expiry})
    enqueue(tx, Kind.GRANTED, referrer_id, {"duration": bonus, "expires_at": new_expiry, "referral": user_id},
            now, PRIORITY_NORMAL)


def _mismatch(tx: sqlite3.Connection, row: sqlite3.Row, now: int, cause: str, invoice_id: int | None,
              detail: dict[str, Any], admin_ids: frozenset[int], payment_ref: int | str) -> ApplyResult:
    """A payment that does not match its invoice: no access; the admins and the member are told, once."""
    user_id = row["user_id"]
    _audit(tx, now, user_id, "payment_mismatch", cause, invoice_id, detail)
    for admin_id in sorted(admin_ids):
        enqueue(tx, Kind.ADMIN_MISMATCH, admin_id, {**detail, "user_id": user_id, "invoice_id": payment_ref}, now,
                PRIORITY_NORMAL, dedupe_key=f"mismatch:{row['payment_uuid']}:{admin_id}")
    enqueue(tx, Kind.PAYMENT_MISMATCH, user_id, detail, now, PRIORITY_NOW, dedupe_key=f"mismatch:{row['payment_uuid']}")
    return ApplyResult(Outcome.MISMATCH, user_id=user_id)


def _paid(tx: sqlite3.Connection, row: sqlite3.Row, now: int, cause: str, invoice_id: int | None,
          detail: dict[str, Any], referral_bonus: int | None, start: int | None = None) -> ApplyResult:
    """What a payment that stepped to paid (once) gives, in its transaction: its code's use, then
    the member's time (or, bought as a gift, its link), the audit record, the referrer's bonus and
    the activation message."""
    user_id = row["user_id"]
    if row["code_id"] is not None:
        _record_code_use(tx, row, now, cause, invoice_id)
    if row["gift"]:
        short_id = _make_bought_gift(tx, row, now, cause, invoice_id, detail)
        return ApplyResult(Outcome.APPLIED, user_id=user_id, gift=short_id)
    new_expiry = extend_subscription(tx, user_id, row["duration"], now, start)
    _audit(tx, now, user_id, "payment_applied", cause, invoice_id, {**detail, "expires_at": new_expiry})
    if referral_bonus:
        _referral_bonus(tx, row, now, cause, invoice_id, referral_bonus)
    # No dedupe key: the payment's step to paid happens once.
    enqueue(tx, Kind.ACTIVATED, user_id,
            {"payment_uuid": row["payment_uuid"], "plan": row["plan_id"], "expires_at": new_expiry}, now, PRIORITY_NOW)
    return ApplyResult(Outcome.APPLIED, user_id=user_id, expires_at=new_expiry)


def _star_subscription_of(tx: sqlite3.Connection, paid: StarPayment) -> sqlite3.Row | None:
    """The member's Stars subscription this payment belongs to (its invoice payload), if any."""
    return tx.execute("SELECT * FROM star_subscriptions WHERE user_id = ? AND payload = ? "
                      "ORDER BY updated_at DESC LIMIT 1", (paid.user_id, paid.payload)).fetchone()


def _note_star_subscription(tx: sqlite3.Connection, paid: StarPayment, subscription: sqlite3.Row | None,
                            plan_id: str, now: int) -> None:
    """A subscription payment: when Telegram charges next. Its first payment starts the record
    (its charge id names the subscription); a renewal moves the date on, never back."""
    if subscription is None or paid.first_recurring:
        tx.execute("INSERT INTO star_subscriptions (charge_id, user_id, payload, plan_id, renews_at, updated_at) "
                   "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (charge_id) DO NOTHING",
                   (paid.charge_id, paid.user_id, paid.payload, plan_id, paid.renews_at, now))
        return
    tx.execute("UPDATE star_subscriptions SET renews_at = max(renews_at, ?), updated_at = ? WHERE charge_id = ?",
               (paid.renews_at, now, subscription["charge_id"]))


def _refund_time(tx: sqlite3.Connection, row: sqlite3.Row, now: int) -> RefundDone:
    """Take back what a refunded payment gave: the time taken, from whom. A gift not yet taken
    stops working; one taken loses its time from whoever took it. A referral bonus the payment
    earned is taken back from the referrer as well. Each only as far as it is still ahead."""
    holder, given = row["user_id"], ("payment_applied", "payment_uuid", row["payment_uuid"])
    if row["gift"]:
        gift = tx.execute("UPDATE gifts SET ready = 0 WHERE invoice_row = ? RETURNING redeemed_by, short_id",
                          (row["id"],)).fetchone()
        holder = None if gift is None else gift["redeemed_by"]
        given = ("gift_redeemed", "gift", None if gift is None else gift["short_id"])
    taken, removed = (0, False) if holder is None else take_back(
        tx, holder, now, "refund", _still_ahead(tx, holder, row["duration"], now, *given))
    bonus = tx.execute("UPDATE referral_bonuses SET taken_back_at = ? WHERE invoice_row = ? AND taken_back_at IS NULL "
                       "RETURNING referrer_id, duration", (now, row["id"])).fetchone()
    if bonus is not None and bonus["duration"]:
        ahead = _still_ahead(tx, bonus["referrer_id"], bonus["duration"], now, "referral_bonus", "referred",
                             row["user_id"])
        back, _ = take_back(tx, bonus["referrer_id"], now, "refund", ahead)
        _audit(tx, now, bonus["referrer_id"], "referral_bonus_taken_back", "refund", row["invoice_id"],
               {"referred": row["user_id"], "duration": bonus["duration"], "taken": back})
    return RefundDone(taken, holder, removed)


# What gives a member time (their audit record's action); each stacks after the time they have.
_TIME_GIVEN = ("payment_applied", "granted", "gift_redeemed", "referral_bonus", "trial_started")


def _still_ahead(tx: sqlite3.Connection, user_id: int, duration: int, now: int, action: str, key: str,
                 value: object) -> int:
    """How much of the `duration` that the member's audit record of `action` (with `key` = `value`)
    gave is still ahead of them. Time stacks at the end, so the time given after it, and still
    standing, is the last of what they have, and its own lies just before: their time left, less
    that, and never more than it gave. Nothing, once an admin's revoke has ended their time since."""
    left = max(0, (_expiry(tx, user_id) or now) - now)
    records = tx.execute("SELECT id, detail FROM audit WHERE user_id = ? AND action = ? AND instr(detail, ?) > 0 "
                         "ORDER BY id DESC", (user_id, action, str(value))).fetchall() if value is not None else []
    anchor = next((r["id"] for r in records if json.loads(r["detail"]).get(key) == value), None)
    if anchor is None:  # given before such records were kept: at most what is left
        return min(duration, left)
    later = 0
    for record in tx.execute(f"SELECT action, detail FROM audit WHERE user_id = ? AND id > ? AND action IN "
                             f"({','.join('?' * len(_TIME_GIVEN))}, 'revoked')", (user_id, anchor, *_TIME_GIVEN)):
        if record["action"] == "revoked":
            return 0
        later += _standing(tx, user_id, record["action"], json.loads(record["detail"]))
    return max(0, min(duration, left - later))


def _standing(tx: sqlite3.Connection, user_id: int, action: str, detail: dict[str, Any]) -> int:
    """The time an audit record gave, unless it was taken back since (a refund)."""
    if action == "payment_applied":
        paid = tx.execute("SELECT duration, status FROM invoices WHERE payment_uuid = ?",
                          (detail.get("payment_uuid"),)).fetchone()
        return paid["duration"] if paid is not None and paid["status"] == "paid" else 0
    if action == "gift_redeemed":
        gift = tx.execute("SELECT ready FROM gifts WHERE short_id = ? AND redeemed_by = ?",
                          (detail.get("gift"), user_id)).fetchone()
        return detail.get("duration", 0) if gift is None or gift["ready"] else 0
    if action == "referral_bonus":
        bonus = tx.execute("SELECT taken_back_at FROM referral_bonuses WHERE referred_id = ?",
                           (detail.get("referred"),)).fetchone()
        return detail.get("duration", 0) if bonus is None or bonus["taken_back_at"] is None else 0
    return int(detail.get("duration", 0))  # a grant; a trial (its record says since this version)


def take_back(tx: sqlite3.Connection, user_id: int, now: int, why: str, amount: int) -> tuple[int, bool]:
    """Take up to `amount` off a member's time, never more than is left; with nothing left, the
    member is removed now (no grace period). The time taken, and whether they are removed."""
    sub = tx.execute("SELECT expires_at, revoked_at FROM subscriptions WHERE user_id = ?", (user_id,)).fetchone()
    if sub is None or sub["revoked_at"] is not None or sub["expires_at"] <= now:
        return 0, False
    taken = min(amount, sub["expires_at"] - now)
    if taken <= 0:
        return 0, False
    if sub["expires_at"] - taken > now:
        tx.execute("UPDATE subscriptions SET expires_at = ?, updated_at = ? WHERE user_id = ?",
                   (sub["expires_at"] - taken, now, user_id))
        return taken, False
    tx.execute("UPDATE subscriptions SET expires_at = ?, removed_for = ?, updated_at = ? WHERE user_id = ?",
               (now, now, now, user_id))
    enqueue(tx, Kind.EXPIRE, user_id, {"expires_at": now, why: True}, now, PRIORITY_NOW,
            dedupe_key=f"{why}:{user_id}:{now}")
    return taken, True


class CodeTaken(Exception):
    """A discount code's uses are all taken (paid, or held by invoices still payable), or a
    first-payment-only code is already held or spent by this member."""


def _reserve_code_use(tx: sqlite3.Connection, code_id: int, user_id: int, now: int, payment_uuid: str) -> None:
    """Hold one of the code's uses for the invoice being recorded, in its transaction: uses paid
    and invoices still payable with the code count against the limit together, so however many
    members buy at once, at most `max_uses` discounted payments can come. An invoice that
    expires unpaid gives its use back."""
    code = tx.execute("SELECT max_uses, first_only FROM codes WHERE id = ?", (code_id,)).fetchone()
    held = """SELECT count(*) FROM invoices WHERE code_id = ? AND status IN ('creating', 'pending')
                AND expires_at > ? AND payment_uuid != ?"""
    if code["max_uses"] is not None:
        taken = (tx.execute("SELECT count(*) FROM code_uses WHERE code_id = ?", (code_id,)).fetchone()[0]
                 + tx.execute(held, (code_id, now, payment_uuid)).fetchone()[0])
        if taken >= code["max_uses"]:
            raise CodeTaken(f"code {code_id}: {taken} of {code['max_uses']} uses taken")
    if code["first_only"]:
        spent = tx.execute(
            """SELECT 1 FROM invoices i WHERE i.user_id = ? AND i.payment_uuid != ? AND (i.status = 'paid'
                 OR (i.status IN ('creating', 'pending') AND i.expires_at > ?
                     AND i.code_id IN (SELECT id FROM codes WHERE first_only = 1)))""",
            (user_id, payment_uuid, now)).fetchone()
        if spent is not None:
            raise CodeTaken(f"code {code_id}: member {user_id} has paid, or holds a first-payment discount")


def _expiry(tx: sqlite3.Connection, user_id: int) -> int | None:
    row = tx.execute("SELECT expires_at FROM subscriptions WHERE user_id = ?", (user_id,)).fetchone()
    return row[0] if row else None


def _currency_type(currency: str, fiat: bool) -> str:
    """invoices.currency_type: 'stars' for Telegram Stars, else Crypto Pay's 'fiat' or 'crypto'."""
    return "stars" if currency == STARS else "fiat" if fiat else "crypto"


def _assets_column(fiat: bool, accepted_assets: tuple[str, ...]) -> str | None:
    """invoices.accepted_assets: what a fiat invoice may be paid in ('' = any); NULL for crypto."""
    return ",".join(accepted_assets) if fiat else None


def _set_invoice_outcome(tx: sqlite3.Connection, row: sqlite3.Row, status: str, paid: Invoice,
                         now: int, cause: str) -> bool:
    """Step the invoice to paid or mismatch, if it is still as `row` shows it; False if not."""
    # invoice_id is set only where it is missing (found by payload): naming an indexed column in
    # SET rewrites its index entry even when the value stays, one more page per payment.
    sets = "" if row["invoice_id"] is not None else "invoice_id = :invoice_id, "
    cursor = tx.execute(
        f"""UPDATE invoices SET {sets}status = :status, paid_at = :now, paid_asset = :asset,
                   paid_amount = :amount, applied_by = :cause, webhook_at = coalesce(:arrived, webhook_at)
            WHERE id = :id AND status = :was AND invoice_amount IS :invoice_amount
              AND status IN ('creating', 'pending', 'expired', 'failed')""",
        # A webhook's arrival is recorded in the same statement (the poller's watch reads it).
        {"invoice_id": paid.invoice_id, "status": status, "now": now, "asset": paid.paid_asset,
         "amount": paid.paid_amount, "cause": cause, "arrived": now if cause == "webhook" else None,
         "id": row["id"], "was": row["status"], "invoice_amount": row["invoice_amount"]},
    )
    return cursor.rowcount == 1


def _audit(tx: sqlite3.Connection, now: int, user_id: int | None, action: str, cause: str,
           invoice_id: int | None = None, detail: dict[str, Any] | None = None) -> None:
    tx.execute(
        "INSERT INTO audit (at, user_id, action, cause, invoice_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (now, user_id, action, cause, invoice_id, json.dumps(detail or {}, sort_keys=True, default=str)),
    )


def _statements(sql: str) -> list[str]:
    """Split a migration into complete statements."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    leftover = [line for line in current.splitlines() if line.strip() and not line.strip().startswith("--")]
    if leftover:
        raise RuntimeError(f"schema.sql: incomplete statement: {current.strip()[:60]}")
    return statements
