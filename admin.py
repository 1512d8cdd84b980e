"""The owner's tools, shared by the admin commands in Telegram and the command line."""
from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

import texts
from config import parse_duration
from db import Database

SPARKS = "▁▂▃▄▅▆▇█"


class AdminError(Exception):
    """A command the owner should correct; `key` and `values` name the text that says how."""

    def __init__(self, key: str, **values: object):
        super().__init__(key)
        self.key = key
        self.values = values

    def text(self, lang: str) -> str:
        return texts.t(lang, self.key, **self.values)


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if not top:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, (v * (len(SPARKS) - 1) + top - 1) // top)] for v in values)


def stats_text(db: Database, now: int, lang: str) -> str:
    stats = db.stats(now)
    revenue = ", ".join(texts.price(amount, currency) for currency, amount in stats["revenue"].items())
    return texts.t(lang, "admin_stats", members=stats["members"], active=stats["active"],
                   expiring=stats["expiring"], pending=stats["pending"],
                   revenue=revenue or texts.t(lang, "admin_no_revenue"),
                   sparkline=sparkline(stats["daily"]), payments=sum(stats["daily"]))


def find_member(db: Database, ref: str, allow_new_id: bool = False) -> tuple[int, str]:
    """(user id, how to name them) for an id or @username; AdminError if unknown."""
    row = db.find_member(ref)
    if row is not None:
        name = f"@{row['username']}" if row["username"] else str(row["user_id"])
        return row["user_id"], name
    if allow_new_id and ref.strip().isdigit():
        return int(ref.strip()), ref.strip()
    raise AdminError("admin_unknown_user", user=ref)


def grant(db: Database, ref: str, duration_text: str, now: int, by: str, lang: str) -> str:
    try:
        duration = parse_duration(duration_text)
    except ValueError:
        raise AdminError("admin_bad_duration", duration=duration_text) from None
    if duration <= 0:
        raise AdminError("admin_bad_duration", duration=duration_text)
    user_id, name = find_member(db, ref, allow_new_id=True)
    expires_at = db.grant(user_id, duration, now, by)
    return texts.t(lang, "admin_granted", user=name, date=texts.format_date(expires_at, lang))


def revoke(db: Database, ref: str, now: int, by: str, lang: str) -> str:
    user_id, name = find_member(db, ref)
    if not db.revoke(user_id, now, by):
        return texts.t(lang, "admin_nothing_to_revoke", user=name)
    return texts.t(lang, "admin_revoked", user=name)


def user_text(db: Database, ref: str, now: int, lang: str) -> str:
    user_id, name = find_member(db, ref)
    member = db.member(user_id)
    expires_at = db.expires_at(user_id)
    status = (texts.t(lang, "admin_user_active", date=texts.format_date(expires_at, lang))
              if expires_at and expires_at > now else texts.t(lang, "admin_user_inactive"))
    invoices = [f"{_day(row['created_at'])} {row['plan_id']} {row['amount']} {row['currency']}: {row['status']}"
                + (f" ({row['applied_by']})" if row["applied_by"] else "")
                for row in db.member_invoices(user_id)]
    history = [f"{_day(row['at'])} {row['action']} ({row['cause']})" for row in db.member_audit(user_id)]
    none = texts.t(lang, "admin_none")
    return texts.t(lang, "admin_user", user=name, user_id=user_id, language=member["language"] or "?",
                   since=_day(member["created_at"]), status=status,
                   invoices="\n".join(invoices) or none, history="\n".join(history) or none)


EXPORT_COLUMNS = ["user_id", "username", "first_name", "language", "member_since", "expires_at",
                  "invoice_id", "plan", "amount", "currency", "invoice_status", "invoice_created_at",
                  "paid_at", "paid_asset", "paid_amount", "applied_by"]


def write_csv(db: Database, stream: TextIO, progress: Callable[[int], None] | None = None) -> int:
    """Members and their payments as CSV; return the number of rows."""
    writer = csv.writer(stream)
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for row in db.export_rows():
        writer.writerow([_cell(value) for value in (
            row["user_id"], row["username"] or "", row["first_name"] or "", row["language"] or "",
            _iso(row["created_at"]), _iso(row["expires_at"]), row["invoice_id"] or "", row["plan_id"] or "",
            row["amount"] or "", row["currency"] or "", row["invoice_status"] or "",
            _iso(row["invoice_created_at"]), _iso(row["paid_at"]), row["paid_asset"] or "",
            row["paid_amount"] or "", row["applied_by"] or "",
        )])
        count += 1
        if progress and count % 10_000 == 0:
            progress(count)
    return count


def _cell(value: object) -> object:
    """Names come from Telegram users: keep a spreadsheet from running one as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _iso(timestamp: int | None) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")

