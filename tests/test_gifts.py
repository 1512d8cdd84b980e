"""Gift links: made by the owner (command line), each giving a plan's time, once, to the first
member who opens it; only the tokens' hashes are stored."""
import csv
import io
import re

import pytest
from builders import audit_rows, command, gift_links, last_text
from test_admin import run_cli

import admin
import gifts
from outbox import Sender

DAY = 86400
MONTH = 30 * DAY
USED = "This gift link was already used."
INVALID = "This gift link does not work"


def make(app, count: int = 1, plan: str = "month") -> list[str]:
    return [token for token, _ in gift_links(app, plan, count)]


def redeemed(app) -> int:
    return app.db.connect().execute("SELECT count(*) FROM audit WHERE action = 'gift_redeemed'").fetchone()[0]


# --- the owner makes links ---

def test_create_writes_distinct_links_and_the_database_keeps_only_their_hashes(env, tmp_path, app):
    out = tmp_path / "gifts.csv"
    code, _, err = run_cli(env, tmp_path, "gift", "create", "--plan", "month", "--count", "25", "--out", str(out))
    assert code == 0, err
    assert "25 links written" in err
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert len(rows) == 25 and len({row["link"] for row in rows}) == 25
    tokens = []
    for row in rows:
        match = re.fullmatch(r"https://t\.me/[^?]+\?start=g-([A-Za-z0-9_-]+)", row["link"])
        assert match and len("g-" + match[1]) <= 64 and len(match[1]) >= 43  # 256 random bits
        assert row["plan"] == "month" and row["id"] == gifts.token_hash(match[1])[:8] and row["created"]
        tokens.append(match[1])
    stored = app.db.connect().execute("SELECT * FROM gifts").fetchall()
    assert {r["token_hash"] for r in stored} == {gifts.token_hash(t) for t in tokens}
    assert {r["duration"] for r in stored} == {MONTH}
    dump = "\n".join(app.db.connect().iterdump())
    assert not any(token in dump for token in tokens)  # a copy of the database holds no usable link


def test_create_prints_the_links_without_out(env, tmp_path, app):
    code, out, err = run_cli(env, tmp_path, "gift", "create", "--plan", "trial", "--count", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "link,id,plan,created" and len(lines) == 3 and all("?start=g-" in line for line in lines[1:])


@pytest.mark.parametrize("plan, count, refused", [
    ("month", 0, "--count 0"), ("month", 10_001, "--count 10001"), ("week", 1, "--plan week: no such plan")])
def test_create_refuses_a_wrong_count_or_plan_and_makes_nothing(app, plan, count, refused):
    with pytest.raises(gifts.GiftError, match=refused):
        gift_links(app, plan, count)
    assert app.db.gifts() == []


def test_the_command_line_refuses_a_wrong_count_or_a_missing_plan(env, tmp_path, app):
    code, _, err = run_cli(env, tmp_path, "gift", "create", "--plan", "month", "--count", "10001")
    assert code == 1 and err.strip() == "error: --count 10001: from 1 to 10000"
    code, _, err = run_cli(env, tmp_path, "gift", "create", "--count", "3")
    assert code == 1 and "--plan" in err


# --- members open them ---

def test_a_link_gives_the_plans_time_once_with_the_way_in(bot, app, telegram):
    [token] = make(app)
    start = app.now()
    command(bot, f"/start g-{token}")
    assert last_text(telegram).startswith("Gift accepted: 30 days of membership is yours.")
    expires_at = app.db.expires_at(501)
    assert start + MONTH <= expires_at <= app.now() + MONTH
    Sender(app).run_once()
    told = last_text(telegram)
    assert told.startswith("A gift: 30 days of membership.") and "Not in the club yet" in told
    [record] = [r for r in audit_rows(app.db, 501) if r["action"] == "gift_redeemed"]
    assert gifts.token_hash(token)[:8] in record["detail"] and token not in record["detail"]
    command(bot, f"/start g-{token}")  # again: nothing more
    assert last_text(telegram).startswith(USED)
    command(bot, f"/start g-{token}", user_id=502)
    assert last_text(telegram, 502).startswith(USED)
    assert app.db.expires_at(501) == expires_at and app.db.expires_at(502) is None
    assert redeemed(app) == 1


def test_one_link_opened_by_two_members_at_once_gives_the_time_to_one(app, all_read_first):
    [token] = make(app)
    start = app.now()
    results = all_read_first([lambda user=user: gifts.redeem(app.db, user, token, app.now()) for user in (501, 502)])
    assert sorted(key for key, _ in results) == ["gift_redeemed", "gift_used"]
    times = [app.db.expires_at(user) for user in (501, 502)]
    assert times.count(None) == 1 and start + MONTH <= max(t or 0 for t in times) <= app.now() + MONTH
    assert redeemed(app) == 1
    assert app.db.connect().execute("SELECT count(*) FROM outbox WHERE kind = 'granted'").fetchone()[0] == 1


def test_wrong_links_count_as_wrong_tries_and_hit_the_codes_limit(bot, app, telegram):
    [token] = make(app)
    for wrong in ("nonsense", "x" * 43, token[:-1] + ("A" if token[-1] != "A" else "B"), "", "a!" * 20):
        command(bot, f"/start g-{wrong}")
        assert last_text(telegram).startswith(INVALID)
    command(bot, f"/start g-{token}")  # even the right one, now: guessing must not go on
    assert last_text(telegram).startswith("Too many tries")
    assert app.db.expires_at(501) is None
    assert app.db.connect().execute("SELECT count(*) FROM code_tries WHERE user_id = 501").fetchone()[0] == 5
    command(bot, f"/start g-{token}", user_id=502)  # another member is not held back
    assert last_text(telegram, 502).startswith("Gift accepted")


def test_gift_list_shows_who_redeemed_which(env, tmp_path, app, bot, telegram):
    first, second = make(app, 2)
    command(bot, f"/start g-{first}", user_id=501)  # builders' member 501 is @m501
    code, out, err = run_cli(env, tmp_path, "gift", "list")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{gifts.token_hash(first)[:8]} plan:month created:")
    assert lines[0].endswith(" UTC") and "redeemed by 501 @m501 at " in lines[0]
    assert lines[1].startswith(f"{gifts.token_hash(second)[:8]} plan:month") and lines[1].endswith("not redeemed")


def test_stats_count_the_links_made_and_redeemed(app, bot):
    assert "Gift links" not in admin.stats_text(app.db, app.now(), "en")
    tokens = make(app, 3)
    command(bot, f"/start g-{tokens[0]}")
    assert "Gift links: 3 made (0 bought by members), 1 redeemed" in admin.stats_text(app.db, app.now(), "en")
    assert ("Подарочные ссылки: создано 3 (куплено участниками 0), использовано 1"
            in admin.stats_text(app.db, app.now(), "ru"))


def test_the_csv_has_one_row_a_link(app):
    made = gift_links(app, "year", 3)
    stream = io.StringIO()
    assert gifts.write_csv(stream, made, "year", app.now(), "club_test_bot") == 3
    rows = list(csv.reader(stream.getvalue().splitlines()))
    assert rows[0] == ["link", "id", "plan", "created"]
    assert [row[0] for row in rows[1:]] == [f"https://t.me/club_test_bot?start=g-{t}" for t, _ in made]


def test_gift_links_are_never_written_over_and_none_work_unless_written(app, env, tmp_path):
    """A second batch to the same file would lose the first while its links still work; a file
    that cannot be written must not leave links that no one has."""
    out = tmp_path / "gifts.csv"
    code, _, err = run_cli(env, tmp_path, "gift", "create", "--plan", "month", "--count", "3", "--out", str(out))
    assert code == 0, err
    first = out.read_text()
    code, _, err = run_cli(env, tmp_path, "gift", "create", "--plan", "month", "--count", "2", "--out", str(out))
    assert code == 1 and "never written over" in err
    assert out.read_text() == first
    code, _, err = run_cli(env, tmp_path, "gift", "create", "--plan", "month", "--count", "4",
                           "--out", str(tmp_path / "missing" / "gifts.csv"))
    assert code == 1 and "does not exist" in err
    assert app.db.connect().execute("SELECT count(*) FROM gifts").fetchone()[0] == 3
