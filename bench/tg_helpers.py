"""Seeding helpers shared by the benchmark sections."""
from __future__ import annotations

import time
import uuid

from db import Database


def insert_pending(database: Database, cryptopay, user_id: int, amount: str = "5") -> int:
    """A member with a pending invoice for 'month', known to the fake Crypto Pay too; its id."""
    now = int(time.time())
    invoice_id = next(cryptopay.invoice_ids)
    payment_uuid = str(uuid.uuid4())
    with database.transaction() as tx:
        tx.execute("INSERT OR IGNORE INTO members (user_id, uuid, language, created_at) VALUES (?, ?, 'en', ?)",
                   (user_id, str(uuid.uuid4()), now))
        tx.execute("INSERT INTO invoices (payment_uuid, invoice_id, user_id, plan_id, duration, amount, currency, "
                   "currency_type, status, created_at, expires_at) VALUES (?, ?, ?, 'month', 2592000, ?, 'USDT', "
                   "'crypto', 'pending', ?, ?)", (payment_uuid, invoice_id, user_id, amount, now, now + 3600))
    cryptopay.add_invoice({"invoice_id": invoice_id, "status": "active", "asset": "USDT", "amount": amount,
                           "currency_type": "crypto", "payload": payment_uuid,
                           "bot_invoice_url": f"https://t.me/CryptoBot?start=IV{invoice_id}"})
    return invoice_id
