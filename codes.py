"""Discount codes: the owner's words for them, the discounted prices, and a member applying one.

Prices stay Decimal and are rounded down to what the currency allows (PLACES). A code is
refused when it is created if it would bring any plan it covers below the floor: the
discounted price must stay at least 1% of the plan's price and at least one smallest unit
of the currency (Crypto Pay has per-asset minimums of its own; this keeps well clear of
zero and of prices that round away).
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_DOWN, Decimal, InvalidOperation

import texts
from config import Config, Plan
from db import Database

# Decimal places a price is rounded down to; fiat currencies take FIAT_PLACES, any asset not
# named here DEFAULT_PLACES.
PLACES = {"USDT": 2, "USDC": 2, "TON": 4, "BTC": 8, "ETH": 6, "LTC": 6, "BNB": 6, "TRX": 4, "SOL": 6,
          "DOGE": 4, "NOT": 2}
FIAT_PLACES = 2
DEFAULT_PLACES = 6
NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
RESERVED = frozenset({"add", "disable", "list"})  # the admins' /code words
MAX_USES = 1_000_000
ATTACHED_FOR = 86400  # a code applied by a member stays with their invoices this long
TRIES = 5  # wrong codes a member may send...
TRIES_WINDOW = 3600  # ...within this many seconds


class CodeError(Exception):
    """A code the owner should correct: `key` and `values` name the text (texts.py) that says how."""

    def __init__(self, key: str, **values: object):
        super().__init__(key)
        self.key = key
        self.values = values


@dataclass(frozen=True)
class CodeSpec:
    name: str
    percent: int | None = None
    off: Decimal | None = None
    plans: tuple[str, ...] = ()
    max_uses: int | None = None
    until_at: int | None = None
    first_only: bool = False


def places(currency: str, fiat: bool) -> int:
    return FIAT_PLACES if fiat else PLACES.get(currency, DEFAULT_PLACES)


def discounted(amount: Decimal, currency: str, fiat: bool, percent: int | None, off: Decimal | None) -> Decimal:
    """The price after the discount, rounded down to the currency's precision."""
    price = amount * (100 - percent) / 100 if percent is not None else amount - off
    return price.quantize(Decimal(1).scaleb(-places(currency, fiat)), rounding=ROUND_DOWN)


def price_for(plan: Plan, code: sqlite3.Row | CodeSpec) -> Decimal:
    off = code.off if isinstance(code, CodeSpec) else (Decimal(code["off"]) if code["off"] else None)
    percent = code.percent if isinstance(code, CodeSpec) else code["percent"]
    return discounted(plan.amount, plan.currency, plan.is_fiat, percent, off)


def floor(plan: Plan) -> Decimal:
    """The least a discounted price may be: 1% of the price and one smallest unit."""
    return max(plan.amount / 100, Decimal(1).scaleb(-places(plan.currency, plan.is_fiat)))


def covers(code: sqlite3.Row, plan: Plan, gift: bool = False) -> bool:
    """Whether the code discounts this plan (bought as a gift, if `gift`): one it names (or any,
    when it names none), and whose discounted price stays at the floor or above. A plan added or
    made cheaper after the code was made is not taken below the floor: it is sold at its own
    price. A newcomer's discount (first payment only) is not for gifts: passed on, it would
    cheapen a member's own time."""
    if plan.is_trial or plan.is_stars or (code["plans"] and plan.id not in code["plans"].split(",")):
        return False  # Stars are whole numbers: no discounts there
    if gift and code["first_only"]:
        return False
    return price_for(plan, code) >= floor(plan)


def parse(words: list[str], config: Config, now: int) -> CodeSpec:
    """`NAME (--percent P | --off AMOUNT) [--plans a,b] [--uses N] [--until DATE] [--first-payment-only]`."""
    if not words or words[0].startswith("--"):
        raise CodeError("admin_usage_code")
    name, flags = words[0], _flags(words[1:])
    if not NAME_RE.fullmatch(name) or name.lower() in RESERVED:
        raise CodeError("admin_code_bad_name", code=name[:40])
    if ("percent" in flags) == ("off" in flags):
        raise CodeError("admin_usage_code")
    percent = _number(flags.get("percent"), 1, 99, "admin_code_bad_percent")
    off = _amount(flags.get("off"))
    plans = tuple(p for p in flags.get("plans", "").split(",") if p)
    unknown = [p for p in plans if config.plan(p) is None or config.plan(p).is_trial]
    if unknown or ("plans" in flags and not plans):
        raise CodeError("admin_code_bad_plans", plans=",".join(unknown) or "''")
    spec = CodeSpec(name, percent, off, plans, _number(flags.get("uses"), 1, MAX_USES, "admin_code_bad_uses"),
                    _until(flags.get("until"), now), "first-payment-only" in flags)
    for plan in config.plans:
        if not plan.is_trial and (not plans or plan.id in plans) and price_for(plan, spec) < floor(plan):
            raise CodeError("admin_code_too_low", plan=plan.id, price=texts.price(plan.amount, plan.currency))
    return spec


def _flags(words: list[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    items = iter(words)
    for word in items:
        flag = word[2:] if word.startswith("--") else ""
        if flag == "first-payment-only":
            flags[flag] = ""
        elif flag in ("percent", "off", "plans", "uses", "until") and flag not in flags:
            value = next(items, None)
            if value is None:
                raise CodeError("admin_usage_code")
            flags[flag] = value
        else:
            raise CodeError("admin_usage_code")
    return flags


def _number(text: str | None, low: int, high: int, key: str) -> int | None:
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]{1,9}", text) or not low <= int(text) <= high:
        raise CodeError(key, value=text[:20])
    return int(text)


def _amount(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text) if re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,18})?", text) else None
    except InvalidOperation:
        value = None
    if value is None or value <= 0:
        raise CodeError("admin_code_bad_off", value=text[:20])
    return value


def _until(text: str | None, now: int) -> int | None:
    """YYYY-MM-DD: usable until the end of that day, UTC; it must not be over already."""
    if text is None:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise CodeError("admin_code_bad_until", value=text[:20]) from None
    until = int((day + timedelta(days=1)).timestamp())
    if until <= now:
        raise CodeError("admin_code_bad_until", value=text)
    return until


def add(db: Database, config: Config, words: list[str], now: int, by: str) -> CodeSpec:
    spec = parse(words, config, now)
    if not db.add_code(spec.name, spec.percent, spec.off, spec.plans, spec.max_uses, spec.until_at,
                       spec.first_only, now, by):
        raise CodeError("admin_code_exists", code=spec.name)
    return spec


def disable(db: Database, name: str, now: int, by: str) -> None:
    if not db.disable_code(name, now, by):
        raise CodeError("admin_code_unknown", code=name[:40])


def state(code: sqlite3.Row, now: int) -> str:
    """active, disabled, expired or used up."""
    if code["disabled_at"] is not None:
        return "disabled"
    if code["until_at"] is not None and now >= code["until_at"]:
        return "expired"
    if code["max_uses"] is not None and code["uses"] >= code["max_uses"]:
        return "used up"
    return "active"


def usable(db: Database, code: sqlite3.Row | None, user_id: int, now: int) -> bool:
    """May this member make an invoice with this code now (whether it covers a plan is covers')?
    The limit and the window are checked here, when an invoice is made, never when it is paid."""
    if code is None or state(code, now) != "active":
        return False
    return not (code["first_only"] and db.has_paid(user_id))


def attached(db: Database, user_id: int, now: int) -> sqlite3.Row | None:
    """The code the member applied, while it stays attached (not checked for use here)."""
    member = db.member(user_id)
    if member is None or member["code_id"] is None or (member["code_until"] or 0) <= now:
        return None
    return db.code_by_id(member["code_id"])


def too_many_tries(db: Database, user_id: int, now: int) -> bool:
    """Whether the member has had their TRIES wrong codes or gift links within TRIES_WINDOW."""
    return db.wrong_code_tries(user_id, now - TRIES_WINDOW) >= TRIES


def apply(db: Database, user_id: int, name: str, now: int, how: str) -> str:
    """A member applies a code by name (`how`: "link" or "command"); the text key of the answer.
    Unknown, used-up, expired, disabled and not-for-you codes get the same answer, and a member
    gets TRIES wrong ones within TRIES_WINDOW."""
    if too_many_tries(db, user_id, now):
        return "code_too_many"
    code = db.code(name) if NAME_RE.fullmatch(name) else None
    if not usable(db, code, user_id, now):
        db.wrong_code(user_id, name, now, how, now - TRIES_WINDOW)
        return "code_invalid"
    db.attach_code(user_id, code["id"], now + ATTACHED_FOR, now, how)
    return "code_applied"


def describe(code: sqlite3.Row | CodeSpec) -> str:
    """"-20%" or "-1.5" (an amount off, in each plan's currency)."""
    percent = code.percent if isinstance(code, CodeSpec) else code["percent"]
    return f"-{percent}%" if percent is not None else f"-{code.off if isinstance(code, CodeSpec) else code['off']}"


def list_lines(db: Database, now: int) -> list[str]:
    """One line a code: name, discount, plans, uses/limit, until, state, revenue."""
    revenue = db.code_revenue()
    lines = []
    for code in db.codes():
        until = datetime.fromtimestamp(code["until_at"] - 1, UTC).strftime("%Y-%m-%d") if code["until_at"] else "-"
        brought = ", ".join(texts.price(a, c) for c, a in sorted(revenue.get(code["id"], {}).items())) or "0"
        lines.append(f"{code['name']} {describe(code)} plans:{code['plans'] or 'all'} "
                     f"uses:{code['uses']}/{code['max_uses'] or '∞'} until:{until}"
                     f"{' first-payment-only' if code['first_only'] else ''} {state(code, now)} revenue:{brought}")
    return lines
