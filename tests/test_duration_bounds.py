"""Durations are bounded wherever they are read, and any stored date still formats."""
import csv
import io

import pytest
from builders import command, member_with_time
from conftest import ADMIN, START, start_process
from test_admin import CLUBBOT, last_text, run_cli
from test_lifecycle import DAY

import admin
import texts
from config import ConfigError
from handlers import register_handlers
from outbox import Sender

ABSURD = START + 3_000_000 * DAY  # what `grant 503 3000000d` used to commit


@pytest.fixture
def bot(app):
    register_handlers(app.bot, app)
    app.db.upsert_member(ADMIN, "boss", "Boss", "en", app.now())
    return app.bot


def snapshot(app) -> dict:
    """Every row a grant could write (the admin's own member row changes as they are seen)."""
    conn = app.db.connect()
    return {table: [tuple(row) for row in conn.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY rowid")]
            for table, where in (("members", f"user_id != {ADMIN}"), ("subscriptions", "1"), ("audit", "1"),
                                 ("outbox", "1"))}


@pytest.mark.parametrize("name, longest, beyond, limit", [
    ("PLANS", "life:36500d:500:USDT", "month:36501d:5:USDT", "36500d (100 years)"),
    ("PLANS", "month:30d:5:USDT", "month:30d:5:USDT,forever:999999999999999999d:5:USDT", "36500d (100 years)"),
    ("POLL_INTERVAL", "1d", "2d", "longer than 1d"),
    ("SWEEP_INTERVAL", "24h", "86401s", "longer than 1d"),
    ("REMIND_BEFORE", "3d,36500d", "3d,36501d", "36500d (100 years)"),
    ("GRACE_PERIOD", "36500d", "3000000d", "36500d (100 years)"),
])
def test_config_refuses_a_duration_beyond_its_limit_naming_the_setting_and_the_limit(make_config, name, longest,
                                                                                     beyond, limit):
    make_config(**{name: longest})
    with pytest.raises(ConfigError) as error:
        make_config(**{name: beyond})
    assert error.value.name == name
    assert limit in str(error.value) and "\n" not in str(error.value)


def test_start_up_with_an_absurd_plan_stops_with_one_line_naming_the_limit(tmp_path, env):
    process = start_process([CLUBBOT, "stats"], {**env, "PLANS": "month:3000000d:5:USDT"}, tmp_path)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    [line] = err.strip().splitlines()
    assert line.startswith("clubbot: config error: PLANS:") and "36500d" in line


def test_grant_of_an_absurd_duration_answers_one_line_and_changes_nothing(bot, app, telegram):
    before = snapshot(app)
    command(bot, "/grant 503 3000000d", user_id=ADMIN)
    answer = last_text(telegram)
    assert answer == "'3000000d' is longer than 36500 days, the most that can be given at once."
    assert app.db.subscription(503) is None
    assert snapshot(app) == before  # no member, subscription, audit or outbox row


def test_cli_grant_of_an_absurd_duration_answers_one_line_and_changes_nothing(tmp_path, env, app):
    before = snapshot(app)
    code, out, err = run_cli(env, tmp_path, "grant", "504", "999999999999999999d")
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert "'999999999999999999d' is longer than 36500 days" in line and "Traceback" not in err
    assert snapshot(app) == before


def test_stacked_grants_cannot_reach_more_than_100_years_ahead(bot, app, telegram):
    member_with_time(app, 501, days=10)
    before = snapshot(app)
    command(bot, "/grant 501 36500d", user_id=ADMIN)
    assert last_text(telegram) == ("Not done: @m501 (id 501) would then be active for more than 36500 days "
                                   "from now. Nothing was changed.")
    assert snapshot(app) == before
    command(bot, "/grant 501 36490d", user_id=ADMIN)
    assert last_text(telegram).startswith("Done: @m501 (id 501) is active until")
    assert app.db.expires_at(501) == START + 36500 * DAY
    before = snapshot(app)
    command(bot, "/grant 501 1m", user_id=ADMIN)
    assert last_text(telegram).startswith("Not done:")
    assert snapshot(app) == before


def test_a_database_holding_an_absurd_expiry_still_answers_status_export_and_user(bot, app, telegram, tmp_path,
                                                                                    env):
    # As the old `grant 503 3000000d` left it: committed, with its message still queued.
    app.db.upsert_member(503, "m503", "Member", "en", START)
    app.db.upsert_member(504, "m504", "Member", "en", START)
    with app.db.transaction() as tx:
        tx.execute("INSERT INTO subscriptions (user_id, expires_at, period_start, updated_at) VALUES (?, ?, ?, ?)",
                   (503, ABSURD, START, START))
        tx.execute("INSERT INTO subscriptions (user_id, expires_at, period_start, updated_at) VALUES (?, ?, ?, ?)",
                   (504, 2**63 - 1, START, START))
    app.db.enqueue("granted", 503, {"duration": 3_000_000 * DAY, "expires_at": ABSURD}, START)

    command(bot, "/status", user_id=503)
    assert last_text(telegram, 503).startswith("Your membership is active until 31 December 9999")
    command(bot, "/status", user_id=504)
    assert last_text(telegram, 504).startswith("Your membership is active until 31 December 9999")
    Sender(app).run_once()
    assert any(m["text"].startswith("An admin has given you 3000000 days") for m in telegram.messages_to(503))

    command(bot, "/user 503", user_id=ADMIN)
    assert last_text(telegram).startswith("@m503 (id 503)")
    command(bot, "/export", user_id=ADMIN)
    [document] = telegram.called("sendDocument")
    assert "503,m503,Member,en," in document["_raw"].decode()

    code, _, err = run_cli(env, tmp_path, "export", str(tmp_path / "out.csv"))
    assert code == 0, err
    rows = {row["user_id"]: row for row in csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text()))}
    assert rows["503"]["expires_at"] == rows["504"]["expires_at"] == "9999-12-31T23:59:59Z"


@pytest.mark.parametrize("timestamp", [ABSURD, 2**63 - 1, -(2**63), 9.3e18, float("inf"), float("nan")])
def test_any_stored_timestamp_formats_as_a_date(timestamp):
    assert texts.format_date(timestamp, "ru")
    assert texts.days_left(timestamp, START, "en")
    assert admin._iso(timestamp) and admin._day(timestamp)
