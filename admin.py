"""The owner's tools, shared by the admin commands in Telegram and the command line."""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from typing import TextIO

import codes
import texts
from config import MAX_DURATION, Config, DurationTooLong, parse_duration
from db import AmbiguousMember, Database
from views import deep_link

SPARKS = "▁▂▃▄▅▆▇█"


class AdminError(Exception):
    """A command the owner should correct; `key` and `values` name the text that says how.
    A value may be a function of the language, for parts that are texts themselves."""

    def __init__(self, key: str, **values: object):
        super().__init__(key)
        self.key = key
        self.values = values

    def text(self, lang: str) -> str:
        values = {name: value(lang) if callable(value) else value for name, value in self.values.items()}
        return texts.t(lang, self.key, **values)


def sparkline(values: list[int]) -> str:
    top = max(values, default=0)
    if not top:
        return SPARKS[0] * len(values)
    return "".join(SPARKS[min(len(SPARKS) - 1, (v * (len(SPARKS) - 1) + top - 1) // top)] for v in values)


def stats_text(db: Database, now: int, lang: str) -> str:
    stats = db.stats(now)
    revenue = ", ".join(texts.price(amount, currency) for currency, amount in stats["revenue"].items())
    text = texts.t(lang, "admin_stats", members=stats["members"], active=stats["active"],
                   expiring=stats["expiring"], pending=stats["pending"],
                   revenue=revenue or texts.t(lang, "admin_no_revenue"),
                   sparkline=sparkline(stats["daily"]), payments=sum(stats["daily"]))
    if stats["gifts"]:
        text += "\n" + texts.t(lang, "admin_gifts", created=stats["gifts"], bought=stats["gifts_bought"],
                               redeemed=stats["gifts_redeemed"])
    if stats["referred"]:
        time = stats["referral_time"]
        text += "\n" + texts.t(lang, "admin_referrals", referred=stats["referred"], bonuses=stats["referral_bonuses"],
                               time=texts.duration_text(time, lang) if time else "0")
    lines = codes.list_lines(db, now)
    return text + ("\n\n" + texts.t(lang, "admin_codes", codes="\n".join(lines)) if lines else "")


def code_add(db: Database, config: Config, words: list[str], now: int, by: str, lang: str,
             bot_username: str | None = None) -> str:
    """Create a discount code from the owner's words (see codes.parse); the reply."""
    try:
        spec = codes.add(db, config, words, now, by)
    except codes.CodeError as error:
        raise AdminError(error.key, **error.values) from None
    return texts.t(lang, "admin_code_added", code=spec.name, discount=codes.describe(spec),
                   link=deep_link(bot_username, "c", spec.name))


def code_disable(db: Database, name: str, now: int, by: str, lang: str) -> str:
    try:
        codes.disable(db, name, now, by)
    except codes.CodeError as error:
        raise AdminError(error.key, **error.values) from None
    return texts.t(lang, "admin_code_disabled", code=name)


def codes_text(db: Database, now: int, lang: str) -> str:
    lines = codes.list_lines(db, now)
    return texts.t(lang, "admin_codes", codes="\n".join(lines)) if lines else texts.t(lang, "admin_no_codes")


def referrers_text(db: Database, lang: str, bonus: int | None, limit: int = 20) -> str:
    """The top referrers: who brought how many members, how many of them paid, and the time earned."""
    rows = db.top_referrers(limit)
    off = "" if bonus is not None else texts.t(lang, "admin_referrals_off") + "\n\n"
    if not rows:
        return off + texts.t(lang, "admin_no_referrers")
    lines = [f"{member_name(row['user_id'], row['username'])}: {row['referred']}, {row['paid']}, "
             f"{texts.duration_text(row['earned'], lang) if row['earned'] else '0'}" for row in rows]
    return off + texts.t(lang, "admin_referrers", lines="\n".join(lines))


def gifts_text(lines: list[str], lang: str, room: int = 3500) -> str:
    """gifts.list_lines for a message: the newest that fit in `room` characters (a message holds
    4096), and how many older ones are left out."""
    if not lines:
        return texts.t(lang, "admin_no_gifts")
    shown: list[str] = []
    used = 0
    for line in reversed(lines):
        if used + len(line) > room:
            break
        shown.insert(0, line)
        used += len(line) + 1
    more = [f"… +{len(lines) - len(shown)}"] if len(shown) < len(lines) else []
    return texts.t(lang, "admin_gift_list", lines="\n".join(more + shown))


def member_name(user_id: int, username: str | None) -> str:
    """'@alice (id 123)', or '123': always with the id, so that a username which has
    moved to another account shows in the reply."""
    return f"@{username} (id {user_id})" if username else str(user_id)


def find_member(db: Database, ref: str, allow_new_id: bool = False) -> tuple[int, str]:
    """(user id, how to name them) for an id or @username; AdminError if unknown, or if
    the username names several members (they are listed, with their ids)."""
    try:
        row = db.find_member(ref)
    except AmbiguousMember as error:
        rows = error.rows

        def candidates(lang: str) -> str:
            return ", ".join(texts.t(lang, "admin_candidate", user_id=r["user_id"], seen=_seen(r["seen_at"], lang))
                             for r in rows)
        raise AdminError("admin_ambiguous_user", user=ref.strip(), candidates=candidates) from None
    if row is not None:
        return row["user_id"], member_name(row["user_id"], row["username"])
    # Telegram ids fit in 52 bits; a longer number is a mistake, not a member to create.
    if allow_new_id and re.fullmatch(r"[0-9]{1,15}", ref.strip()):
        return int(ref.strip()), ref.strip()
    raise AdminError("admin_unknown_user", user=ref)


def grant(db: Database, ref: str, duration_text: str, now: int, by: str, lang: str,
          command_key: str | None = None) -> str:
    try:
        duration = parse_duration(duration_text)
    except DurationTooLong as error:
        raise AdminError("admin_duration_too_long", duration=duration_text, limit=_limit(error.maximum)) from None
    except ValueError:
        raise AdminError("admin_bad_duration", duration=duration_text) from None
    if duration <= 0:
        raise AdminError("admin_bad_duration", duration=duration_text)
    user_id, name = find_member(db, ref, allow_new_id=True)
    # Stacked grants are bounded too: each alone is at most MAX_DURATION, their sum is not.
    expires_at = db.grant(user_id, duration, now, by, latest=now + MAX_DURATION, command_key=command_key)
    if expires_at is None:
        raise AdminError("admin_grant_too_far", user=name, limit=_limit(MAX_DURATION))
    return texts.t(lang, "admin_granted", user=name, date=texts.format_date(expires_at, lang))


def _limit(seconds: int) -> Callable[[str], str]:
    return lambda lang: texts.duration_text(seconds, lang)


def _seen(timestamp: int | None, lang: str) -> str:
    if timestamp is None:  # a row from before seen_at was recorded
        return texts.t(lang, "admin_seen_unknown")
    return texts.log_date(timestamp)


def revoke(db: Database, ref: str, now: int, by: str, lang: str, command_key: str | None = None) -> str:
    user_id, name = find_member(db, ref)
    if not db.revoke(user_id, now, by, command_key=command_key):
        return texts.t(lang, "admin_nothing_to_revoke", user=name)
    return texts.t(lang, "admin_revoked", user=name)


def user_text(db: Database, ref: str, now: int, lang: str) -> str:
    user_id, name = find_member(db, ref)
    member = db.member(user_id)
    expires_at = db.expires_at(user_id)
    status = (texts.t(lang, "admin_user_active", date=texts.format_date(expires_at, lang))
              if expires_at and expires_at > now else texts.t(lang, "admin_user_inactive"))
    invoices = [f"{_day(row['created_at'])} {payment_ref(row)}{row['plan_id']} {row['amount']} {row['currency']}: "
                f"{row['status']}" + (f" ({row['applied_by']})" if row["applied_by"] else "")
                for row in db.member_invoices(user_id)]
    history = [f"{_day(row['at'])} {row['action']} ({row['cause']})" for row in db.member_audit(user_id)]
    none = texts.t(lang, "admin_none")
    return texts.t(lang, "admin_user", user=name, user_id=user_id, language=member["language"] or "?",
                   since=_day(member["created_at"]), status=status,
                   invoices="\n".join(invoices) or none, history="\n".join(history) or none)


def payment_ref(row) -> str:
    """What names a payment to /refund, with a space after it: its Crypto Pay invoice id, or
    its Stars charge id ("" while it has neither)."""
    ref = row["invoice_id"] if row["invoice_id"] is not None else row["charge_id"]
    return "" if ref is None else f"#{ref} "


EXPORT_COLUMNS = ["user_id", "username", "first_name", "language", "member_since", "expires_at",
                  "invoice_id", "plan", "amount", "currency", "invoice_status", "invoice_created_at",
                  "paid_at", "paid_asset", "paid_amount", "applied_by", "code", "full_amount", "gift_link",
                  "referred_by", "charge_id"]
# The columns every export has begun with since the first: how an earlier export is known.
FIRST_COLUMNS = EXPORT_COLUMNS[:EXPORT_COLUMNS.index("applied_by") + 1]


def export_header() -> bytes:
    """How every export begins, earlier ones too, exactly as write_csv writes it (a header that
    later versions made longer begins the same way)."""
    line = io.StringIO()
    csv.writer(line).writerow(FIRST_COLUMNS)
    return line.getvalue().rstrip("\r\n").encode("utf-8")


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
            row["paid_amount"] or "", row["applied_by"] or "", row["code"] or "", row["full_amount"] or "",
            row["gift_link"] or "", row["referred_by"] or "", row["charge_id"] or "",
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
    return texts.utc(timestamp).strftime("%Y-%m-%dT%H:%M:%SZ")


def _day(timestamp: int) -> str:
    return texts.utc(timestamp).strftime("%Y-%m-%d")

