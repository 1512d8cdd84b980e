"""Running a club: admin commands in Telegram, the owner's CLI, and the alerts."""
import csv
import io
import sqlite3
import threading

import pytest
from builders import audit_rows, command, member_with_time, paid, paid_invoice, paid_update, pending_invoice
from conftest import ADMIN, CLUB_CHAT, PAY_TOKEN, ROOT, START, start_process
from test_lifecycle import DAY, settle

import admin
from cryptopay import CryptoPayError
from handlers import register_handlers
from outbox import Sender
from payments import buy, poll_once

CLUBBOT = str(ROOT / "clubbot.py")


@pytest.fixture
def bot(app):
    register_handlers(app.bot, app)
    app.db.upsert_member(ADMIN, "boss", "Boss", "en", app.now())
    return app.bot


def last_text(telegram, chat_id=ADMIN):
    return telegram.messages_to(chat_id)[-1]["text"]


def run_cli(env, tmp_path, *args, timeout=60):
    process = start_process([CLUBBOT, *args], env, tmp_path)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


# --- Telegram ---

def test_admin_commands_do_not_exist_for_anyone_else(bot, telegram):
    for text in ("/stats", "/grant 501 30d", "/revoke 501", "/user 501", "/export", "/broadcast hi"):
        command(bot, text, user_id=501)
        assert last_text(telegram, 501).startswith("I don't know that command")
    assert telegram.called("sendDocument") == []


def test_every_admin_command_is_registered_from_its_handler_table(bot, app):
    from handlers import ADMIN_COMMANDS, on_admin

    [entry] = [h for h in bot.message_handlers if h["function"].__name__ == on_admin.__name__]
    assert entry["filters"]["commands"] == list(ADMIN_COMMANDS)
    assert all(callable(handler) for handler in ADMIN_COMMANDS.values())


def test_a_mistyped_admin_command_is_unknown_not_a_broadcast(bot, app, telegram):
    member_with_time(app, 501)
    command(bot, "/broadcastt hello", user_id=ADMIN)
    command(bot, "/stats@club_test_bot", user_id=ADMIN)
    assert telegram.messages_to(ADMIN)[0]["text"].startswith("I don't know that command")
    assert telegram.messages_to(ADMIN)[1]["text"].startswith("Members:")
    assert app.db.connect().execute("SELECT count(*) FROM broadcasts").fetchone()[0] == 0


def test_stats_counts_members_revenue_pending_and_draws_payments(bot, app, telegram, cryptopay, clock):
    paid(app, cryptopay, user_id=501)
    clock.advance(DAY)
    paid(app, cryptopay, user_id=502, plan="year")
    paid(app, cryptopay, user_id=503)
    pending_invoice(app, 504)  # left unpaid
    member_with_time(app, 505, days=3)
    command(bot, "/stats", user_id=ADMIN)
    text = last_text(telegram)
    assert "Active: 4" in text
    assert "Expiring within 7 days: 1" in text
    assert "Pending invoices: 1" in text
    assert "Revenue, 30 days: 60 USDT" in text
    assert "(3 in all)" in text
    assert admin.sparkline([0, 1, 2, 4, 8]) == "▁▂▃▅█"


def test_grant_gives_time_tells_the_member_and_records_who(bot, app, telegram, clock):
    command(bot, "/start", user_id=501)
    command(bot, "/grant @m501 30d", user_id=ADMIN)
    assert last_text(telegram).startswith("Done: @m501 (id 501) is active until")
    assert app.db.expires_at(501) == clock.now() + 30 * DAY
    Sender(app).run_once()
    told = last_text(telegram, 501)
    assert told.startswith("An admin has given you 30 days") and "Not in the club yet" in told
    [record] = [r for r in audit_rows(app.db, 501) if r["action"] == "granted"]
    assert record["cause"] == "admin" and f"telegram:{ADMIN}" in record["detail"]


def test_grant_by_id_works_for_someone_who_never_wrote(bot, app, telegram):
    command(bot, "/grant 123456789 7d", user_id=ADMIN)
    assert last_text(telegram).startswith("Done: 123456789 is active")
    assert app.db.expires_at(123456789) is not None


@pytest.mark.parametrize("text, answer", [
    ("/grant @nobody 30d", "I don't know @nobody"),
    ("/grant @m501 forever", "'forever' is not a duration"),
    ("/grant @m501", "Usage: /grant"),
    ("/revoke", "Usage: /revoke"),
    ("/user", "Usage: /user"),
    ("/broadcast", "Usage: /broadcast"),
])
def test_bad_admin_input_gets_a_clear_answer_and_changes_nothing(bot, app, telegram, text, answer):
    command(bot, "/start", user_id=501)
    before = len(audit_rows(app.db))
    command(bot, text, user_id=ADMIN)
    assert last_text(telegram).startswith(answer)
    assert len(audit_rows(app.db)) == before


def test_revoke_removes_at_once_without_grace(bot, app, telegram, make_config, clock):
    member_with_time(app, 501)
    command(bot, "/revoke 501", user_id=ADMIN)
    assert "membership is ended" in last_text(telegram)
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    command(bot, "/revoke 501", user_id=ADMIN)
    assert last_text(telegram) == "@m501 (id 501) has no membership to end."


def test_user_shows_the_subscription_and_its_history(bot, app, telegram, cryptopay):
    paid(app, cryptopay, user_id=501)
    command(bot, "/user @M501", user_id=ADMIN)
    text = last_text(telegram)
    assert text.startswith("@m501 (id 501)") and "Active until" in text
    assert "month 5 USDT: paid (webhook)" in text
    assert "payment_applied (webhook)" in text


def test_export_sends_a_csv_of_members_and_payments(bot, app, telegram, cryptopay):
    paid(app, cryptopay, user_id=501)
    member_with_time(app, 502)
    command(bot, "/export", user_id=ADMIN)
    [document] = telegram.called("sendDocument")
    raw = document["_raw"].decode()
    assert "clubbot-export-" in raw and "user_id,username,first_name" in raw
    assert "501,m501,Member,en," in raw and ",month,5,USDT,paid," in raw


def test_broadcast_reaches_active_members_and_edits_one_progress_message(bot, app, telegram, clock):
    for user in (501, 502, 503):
        member_with_time(app, user)
    app.db.upsert_member(504, "gone", "Gone", "en", app.now())  # no time: not a recipient
    command(bot, "/broadcast Meeting tonight\nat 8", user_id=ADMIN)
    sender = Sender(app)
    first = app.db.due_messages(app.now())[0]
    assert first["kind"] == "broadcast_started"  # the progress message goes ahead of the members'
    sender.deliver(first)
    assert last_text(telegram) == "Broadcast to 3 members: 0 sent, 0 failed."
    telegram.fail("sendMessage", (403, {"ok": False, "error_code": 403, "description": "Forbidden: blocked"}))
    while sender.run_once():
        pass
    got = {user: [m["text"] for m in telegram.messages_to(user)] for user in (501, 502, 503, 504)}
    assert sum(texts == ["Meeting tonight\nat 8"] for texts in got.values()) == 2  # one had blocked the bot
    assert got[504] == []
    edits = telegram.called("editMessageText")
    assert edits and edits[-1]["text"] == "Broadcast finished: 2 sent, 1 failed, of 3."
    assert len({e["message_id"] for e in edits}) == 1
    assert START


# --- alerts ---

def test_admins_hear_once_when_crypto_pay_refuses_the_token_and_once_when_it_is_back(app, cryptopay, telegram):
    app.db.upsert_member(ADMIN, "boss", "Boss", "en", app.now())
    member_with_time(app, 501)
    pending_invoice(app, 501)
    cryptopay.token = "1234:ROTATED"
    for _ in range(3):
        with pytest.raises(CryptoPayError):
            poll_once(app)
    cryptopay.token = PAY_TOKEN
    poll_once(app)
    poll_once(app)
    while Sender(app).run_once():
        pass
    alerts = [m["text"] for m in telegram.messages_to(ADMIN)]
    assert len(alerts) == 2
    assert alerts[0].startswith("Crypto Pay refuses the app token (UNAUTHORIZED)")
    assert alerts[1] == "Crypto Pay accepts the app token again."


def test_admins_hear_once_when_webhooks_stop_arriving(app, cryptopay, telegram, client, clock):
    import dataclasses

    from payments import WEBHOOK_GRACE, WebhookWatch

    app.config = dataclasses.replace(app.config, webhook_url="https://club.example.com")
    watch = WebhookWatch()
    app.db.upsert_member(ADMIN, "boss", "Boss", "en", app.now())
    for user in (501, 502):
        paid_invoice(app, cryptopay, user)
    poll_once(app, watch)  # two payments found by polling, and no webhook after them: one alert
    clock.advance(WEBHOOK_GRACE)
    watch.check(app)
    assert client.post_signed("/webhook/cryptobot", paid_update(paid_invoice(app, cryptopay, 503))).status_code == 200
    clock.advance(1)
    paid_invoice(app, cryptopay, 504)
    poll_once(app, watch)  # webhooks had worked again in between: a new alert
    clock.advance(WEBHOOK_GRACE)
    watch.check(app)
    while Sender(app).run_once():
        pass
    alerts = [m["text"] for m in telegram.messages_to(ADMIN) if "webhook never came" in m["text"]]
    assert len(alerts) == 2


# --- the owner's CLI ---

def test_cli_grant_stats_revoke_and_export(tmp_path, env, app):
    app.db.upsert_member(501, "alice", "Alice", "en", app.now())
    code, out, err = run_cli(env, tmp_path, "grant", "@alice", "30d")
    assert code == 0, err
    assert out.startswith("Done: @alice (id 501) is active until")
    code, out, _ = run_cli(env, tmp_path, "stats")
    assert code == 0 and "Active: 1" in out
    code, _, err = run_cli(env, tmp_path, "export", str(tmp_path / "out.csv"))
    assert code == 0 and "1 rows written" in err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert rows[0]["username"] == "alice" and rows[0]["expires_at"]
    code, out, _ = run_cli(env, tmp_path, "revoke", "alice")
    assert code == 0 and "membership is ended" in out
    code, out, err = run_cli(env, tmp_path, "grant", "@nobody", "30d")
    assert code == 1 and "I don't know @nobody" in err and "Traceback" not in err
    code, out, err = run_cli(env, tmp_path, "grant", "@alice")
    assert code == 2 and "usage" in err.lower()


def test_every_cli_command_has_help(tmp_path, env):
    from clubbot import COMMANDS

    processes = {name: start_process([CLUBBOT, name, "--help"], env, tmp_path) for name in COMMANDS}  # at once
    for name, process in processes.items():
        out, _ = process.communicate(timeout=60)
        assert process.returncode == 0 and "usage:" in out, name


def test_backup_is_consistent_while_payments_are_being_written(tmp_path, env, app, cryptopay):
    from cryptopay import parse_invoice

    for user in range(600, 700):
        app.db.upsert_member(user, None, None, "en", app.now())
    stop = threading.Event()

    def write():
        from db import Database

        database = Database(app.db.path)
        user = 600
        while not stop.is_set() and user < 700:
            row = buy(app, user, app.config.plan("month"), "month").invoice
            database.apply_invoice(parse_invoice(cryptopay.pay(row["invoice_id"])), "webhook", START,
                                   app.config.admin_ids)
            user += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        code, _, err = run_cli(env, tmp_path, "backup", str(tmp_path / "copy.db"))
    finally:
        stop.set()
        writer.join()
    assert code == 0, err
    assert "backup: 100%" in err
    copy = sqlite3.connect(tmp_path / "copy.db")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    paid_count = copy.execute("SELECT count(*) FROM invoices WHERE status = 'paid'").fetchone()[0]
    applied = copy.execute("SELECT count(*) FROM audit WHERE action = 'payment_applied'").fetchone()[0]
    subs = copy.execute("SELECT count(*) FROM subscriptions").fetchone()[0]
    assert paid_count == applied == subs  # each payment whole, or not at all


def test_check_says_all_well_and_prints_the_url_to_paste(tmp_path, env):
    code, out, err = run_cli(env | {"WEBHOOK_URL": "https://club.example.com"}, tmp_path, "check")
    assert code == 0, out + err
    assert "signed in as @club_test_bot" in out
    assert 'Crypto Pay: app "Club"' in out
    assert "the bot can invite and remove members" in out
    assert "https://club.example.com/webhook/cryptobot" in out
    assert "mode  webhook, with polling every 1s for what it misses" in out
    assert out.strip().endswith("All well.")
    # No WEBHOOK_URL: selling by polling, still well; it says so, and how often it looks.
    code, out, _ = run_cli({k: v for k, v in env.items() if k != "POLL_INTERVAL"}, tmp_path, "check")
    assert code == 0 and "mode  selling by polling: no WEBHOOK_URL, so pending invoices are checked every 3s" in out


def test_check_fails_with_the_reason(tmp_path, env, telegram, cryptopay):
    telegram.rights_lost.add(CLUB_CHAT)
    cryptopay.token = "1234:OTHER"
    code, out, _ = run_cli(env | {"WEBHOOK_URL": "http://club.example.com"}, tmp_path, "check")
    assert code == 1
    assert "FAIL  Crypto Pay getMe: getMe: UNAUTHORIZED" in out
    assert "it is not an admin" in out
    assert "CryptoBot calls only https:// URLs" in out
    assert "3 problem(s) found." in out


def test_the_export_keeps_names_from_running_as_spreadsheet_formulas(app):
    app.db.upsert_member(501, "x", "=HYPERLINK(\"http://evil\")", "en", app.now())
    out = io.StringIO()
    admin.write_csv(app.db, out)
    row = list(csv.DictReader(io.StringIO(out.getvalue())))[0]
    assert row["first_name"] == "'=HYPERLINK(\"http://evil\")"
