"""Gift links made by the owner: single-use links that give a plan's time to the first member
who opens them, as a grant would.

A link is `t.me/<bot>?start=g-<token>`. Only the token's sha256 is stored, with a short
public id (the hash's first 8 characters) for the owner's lists and the audit log, so a copy
of the database holds no usable link. A link that does not work counts toward the same limit
on wrong tries as the discount codes (codes.TRIES within codes.TRIES_WINDOW).
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TextIO

import codes
import texts
from config import Config, Plan
from db import GIFT_SHORT_ID as SHORT_ID
from db import GIFT_TOKEN_LENGTH as TOKEN_LENGTH
from db import Database, random_code
from db import gift_token_hash as token_hash
from views import deep_link

MAX_COUNT = 10_000
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # "-" and "_": links made before tokens were letters and digits
HEADER = ("link", "id", "plan", "created")


class GiftError(Exception):
    """A `gift create` the owner should correct; the message says how."""


def make(config: Config, plan_id: str, count: int) -> tuple[Plan, list[tuple[str, str]]]:
    """`count` new links for the plan: (token, short id) each, not stored yet."""
    plan = config.plan(plan_id)
    if plan is None:
        known = ", ".join(p.id for p in config.plans)
        raise GiftError(f"--plan {plan_id[:40]}: no such plan (the plans: {known})")
    if not 1 <= count <= MAX_COUNT:
        raise GiftError(f"--count {count}: from 1 to {MAX_COUNT}")
    made: dict[str, tuple[str, str]] = {}
    while len(made) < count:
        token = random_code(TOKEN_LENGTH)
        digest = token_hash(token)
        made[digest] = (token, digest[:SHORT_ID])
    return plan, list(made.values())


def store(db: Database, plan: Plan, made: list[tuple[str, str]], now: int, by: str,
          command_key: str | None = None, ready: bool = True) -> bool:
    """The links' hashes in the database, all or none (not working until ready, if not `ready`);
    False, storing none, when the command `command_key` was carried out before."""
    return db.add_gifts([(token_hash(token), short_id) for token, short_id in made], plan.id, plan.duration,
                        now, by, command_key, ready)


def write_csv(stream: TextIO, made: list[tuple[str, str]], plan_id: str, now: int,
              bot_username: str | None) -> int:
    """The links as CSV (link, id, plan, created); the number of rows."""
    writer = csv.writer(stream)
    writer.writerow(HEADER)
    created = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    for token, short_id in made:
        writer.writerow((deep_link(bot_username, "g", token), short_id, plan_id, created))
    return len(made)


def csv_header() -> bytes:
    """How every file `gift create --out` writes begins: only such a file is replaced."""
    return ",".join(HEADER).encode("ascii")


def redeem(db: Database, user_id: int, token: str, now: int) -> tuple[str, int | None]:
    """A member opened a gift link: the text key of the answer, and the time given (or None).
    Unknown and malformed tokens get one answer and count as wrong tries; a link used before
    (by anyone) gets another."""
    if codes.too_many_tries(db, user_id, now):
        return "code_too_many", None
    result, duration = db.redeem_gift(token_hash(token), user_id, now) if TOKEN_RE.fullmatch(token) \
        else ("unknown", None)
    if result == "unknown":
        db.wrong_gift(user_id, now, now - codes.TRIES_WINDOW)
        return "gift_invalid", None
    return ("gift_used", None) if result == "used" else ("gift_redeemed", duration)


def send_and_store(db: Database, config: Config, plan_id: str, count: int, now: int, by: str,
                   bot_username: str | None, send: Callable[[bytes], None], command_key: str) -> bool:
    """`gift create` from Telegram: the links made, stored not working, handed to `send` as a CSV
    file, and working once it was sent: a link must not work unless someone has it. False when
    the command was carried out before (the update handled again after a kill): nothing is sent,
    and a batch stored then works (its file may have been sent before the kill). Raises GiftError
    for a wrong plan or count, and whatever `send` raises (the batch deleted)."""
    if db.command_done(command_key):
        db.gift_batch_ready(command_key)  # stored, then the process was stopped: its file may have been sent
        return False
    plan, made = make(config, plan_id, count)
    if not store(db, plan, made, now, by, command_key, ready=False):
        return False
    buffer = io.StringIO()
    write_csv(buffer, made, plan.id, now, bot_username)
    try:
        send(buffer.getvalue().encode("utf-8"))
    except Exception:
        db.drop_gift_batch(command_key)
        raise
    db.gift_batch_ready(command_key)
    return True


def list_lines(db: Database) -> list[str]:
    """One line a link: short id, plan, created, the member who bought it (if one did), and who
    redeemed it when (or "not redeemed")."""
    lines = []
    for gift in db.gifts():
        line = f"{gift['short_id']} plan:{gift['plan_id']} created:{texts.log_date(gift['created_at'])} "
        if gift["bought_by"] is not None:
            line += f"bought by {gift['bought_by']} "
        if gift["redeemed_at"] is None:
            lines.append(line + "not redeemed")
        else:
            who = f"{gift['redeemed_by']}" + (f" @{gift['username']}" if gift["username"] else "")
            lines.append(line + f"redeemed by {who} at {texts.log_date(gift['redeemed_at'])}")
    return lines
