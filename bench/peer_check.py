"""Check ClubBot's database after a peer-kit run (../shared/peer/compare.py --target-check-cmd):
`python bench/peer_check.py DB LO HI` prints one JSON line: paid invoices in LO..HI, invoices
applied twice, and members whose expiry is not their first payment plus the sum of their plans."""
from __future__ import annotations

import json
import sqlite3
import sys


def check(path: str, lo: int, hi: int) -> dict:
    conn = sqlite3.connect(path)
    one = lambda sql, *args: conn.execute(sql, args).fetchone()[0]  # noqa: E731
    # The member's time starts with their payment committed first (the lowest audit id).
    first = dict(conn.execute("SELECT a.user_id, a.at FROM audit a JOIN (SELECT user_id, min(id) AS id FROM audit "
                              "WHERE action = 'payment_applied' GROUP BY user_id) f ON f.id = a.id"))
    owed = dict(conn.execute("SELECT user_id, sum(duration) FROM invoices WHERE status = 'paid' GROUP BY user_id"))
    expiries = dict(conn.execute("SELECT user_id, expires_at FROM subscriptions"))
    return {
        "paid_in_range": one("SELECT count(*) FROM invoices WHERE status = 'paid' AND invoice_id BETWEEN ? AND ?",
                             lo, hi),
        "paid": one("SELECT count(*) FROM invoices WHERE status = 'paid'"),
        "audit_paid": one("SELECT count(*) FROM audit WHERE action = 'payment_applied'"),
        "outbox": one("SELECT count(*) FROM outbox WHERE kind = 'activated'"),
        "doubled": one("SELECT count(*) FROM (SELECT invoice_id FROM audit WHERE action = 'payment_applied' "
                       "GROUP BY invoice_id HAVING count(*) > 1)"),
        "expiry_mismatches": sum(1 for user, total in owed.items() if expiries.get(user) != first[user] + total),
        "orphan_subscriptions": len(set(expiries) - set(owed)),
        "members_without_subscription": len(set(owed) - set(expiries)),
    }


if __name__ == "__main__":
    print(json.dumps(check(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))))
