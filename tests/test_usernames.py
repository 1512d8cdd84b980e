"""@username names exactly one member: the one last seen with it, or the admin is asked for the id."""
import pytest
from builders import audit_rows, feed, message, person
from conftest import ADMIN, START
from test_admin import last_text, run_cli
from test_lifecycle import DAY

from db import extend_subscription
from handlers import register_handlers


@pytest.fixture
def bot(app):
    register_handlers(app.bot, app)
    app.db.upsert_member(ADMIN, "boss", "Boss", "en", app.now())
    return app.bot


def say(bot, user_id: int, username: str | None, text: str = "/help") -> None:
    """A message from a Telegram account as it is named at this moment."""
    feed(bot, message(text, sender=person(user_id, first_name="Someone", username=username)))


def give_time(app, user_id: int, days: int = 30) -> int:
    with app.db.transaction() as tx:
        return extend_subscription(tx, user_id, days * DAY, app.now())


def snapshot(app) -> dict:
    conn = app.db.connect()
    return {table: [tuple(row) for row in conn.execute(f"SELECT * FROM {table} ORDER BY rowid")]
            for table in ("subscriptions", "audit", "outbox")}


def test_seeing_a_member_records_when_and_takes_their_username_from_everyone_else(app, clock):
    app.db.upsert_member(1, "alice", "Alice", "en", app.now())
    clock.advance(60)
    app.db.upsert_member(2, "ALICE", "Eve", "en", app.now())
    assert app.db.member(1)["username"] is None
    assert (app.db.member(2)["username"], app.db.member(2)["seen_at"]) == ("ALICE", START + 60)
    assert app.db.find_member("@alice")["user_id"] == 2


def test_revoke_by_username_hits_the_member_who_holds_it_now_not_an_ex_holder(bot, app, telegram, clock):
    say(bot, 2, "bob")  # id 2 is the older row
    give_time(app, 2)
    clock.advance(60)
    say(bot, 1, "alice")
    alice_until = give_time(app, 1)
    clock.advance(60)
    # id 1 renames away (the bot does not see it); id 2 takes @alice and talks to the bot.
    say(bot, 2, "alice")
    command_at = app.now()
    say(bot, ADMIN, "boss", "/revoke @alice")
    assert app.db.expires_at(1) == alice_until
    assert app.db.subscription(2)["expires_at"] == command_at
    assert app.db.expires_at(2) == 0  # revoked: no time, whatever the clock says
    assert [r["user_id"] for r in audit_rows(app.db) if r["action"] == "revoked"] == [2]
    assert last_text(telegram).startswith("Done: @alice (id 2)'s membership is ended")


def test_a_username_two_rows_hold_is_refused_with_both_ids_listed_and_nothing_changed(bot, app, telegram, clock,
                                                                                      tmp_path, env):
    app.db.upsert_member(1, "alice", "Alice", "en", app.now())
    give_time(app, 1)
    clock.advance(DAY)
    app.db.upsert_member(2, "bob", "Bob", "en", app.now())
    give_time(app, 2)
    with app.db.transaction() as tx:  # as an older version could leave it
        tx.execute("UPDATE members SET username = 'Alice' WHERE user_id = 2")
        tx.execute("UPDATE members SET seen_at = NULL WHERE user_id = 1")
    before = snapshot(app)
    for text in ("/revoke @alice", "/grant @alice 30d", "/user @alice"):
        say(bot, ADMIN, "boss", text)
        assert last_text(telegram) == (
            "@alice names more than one member: id 2 (last seen 2027-01-16 08:00 UTC), id 1 (last seen unknown). "
            "Nothing was changed; use the numeric id.")
    code, out, err = run_cli(env, tmp_path, "revoke", "@alice")
    assert code == 1 and out == ""
    [line] = err.strip().splitlines()
    assert "id 2 (last seen" in line and "id 1 (last seen unknown)" in line
    assert snapshot(app) == before
    say(bot, ADMIN, "boss", "/revoke 2")
    assert last_text(telegram).startswith("Done: @Alice (id 2)'s membership is ended")


def test_replies_to_grant_revoke_and_user_name_the_member_with_their_id(bot, app, telegram):
    say(bot, 501, "carol")
    say(bot, ADMIN, "boss", "/grant @carol 30d")
    assert last_text(telegram).startswith("Done: @carol (id 501) is active until")
    say(bot, ADMIN, "boss", "/user @Carol")
    assert last_text(telegram).startswith("@carol (id 501), language en")
    say(bot, ADMIN, "boss", "/revoke @carol")
    assert last_text(telegram).startswith("Done: @carol (id 501)'s membership is ended")
