"""Seed ClubBot's own database for the peer kit (../shared/peer/compare.py --target-seed-cmd):
`python bench/peer_seed.py DB N K` makes N pending invoices with ids K..K+N-1 by the kit's plan
rule (invoice i: 2.6 USDT 30 days, 7.5 USDT 90 days or 0.5 TON 7 days by i % 3), members spread
over N/2 ids so that most pay twice, and payloads as the kit's updates carry them."""
from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db import Database  # noqa: E402

DAY = 86400
PLANS = (("2.6", "USDT", 30 * DAY), ("7.5", "USDT", 90 * DAY), ("0.5", "TON", 7 * DAY))


def member_for(invoice_id: int, first_id: int, n: int) -> int:
    return 1 + (invoice_id - first_id) % max(1, n // 2)


def seed(path: str, n: int, first_id: int) -> None:
    database = Database(path)
    database.migrate()
    now = int(time.time())
    members = sorted({member_for(i, first_id, n) for i in range(first_id, first_id + n)})
    rows = []
    for invoice_id in range(first_id, first_id + n):
        amount, asset, duration = PLANS[invoice_id % 3]
        member = member_for(invoice_id, first_id, n)
        rows.append((f"club:invoice:{invoice_id}", invoice_id, member, f"plan{invoice_id % 3}", duration, amount,
                     asset, now, now + 86400))
    with database.transaction() as tx:
        tx.executemany("INSERT OR IGNORE INTO members (user_id, uuid, created_at) VALUES (?, ?, ?)",
                       [(member, str(uuid.uuid4()), now) for member in members])
        tx.executemany("INSERT INTO invoices (payment_uuid, invoice_id, user_id, plan_id, duration, amount, "
                       "currency, currency_type, status, created_at, expires_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, 'crypto', 'pending', ?, ?)", rows)
    database.close()


if __name__ == "__main__":
    seed(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
