"""Paid means in, unpaid means out, whatever fails between two steps: half-done removals,
rows queued before a revoke, clock jumps, moderators' bans, floods, updates handled twice."""
import json
import threading
import time

import pytest
from builders import (
    ask_to_join,
    audit_rows,
    command,
    feed,
    group_upgraded,
    join_request,
    member_with_time,
    message,
    paid,
    person,
)
from conftest import ADMIN, CLUB_CHAT, START, wait_for
from test_lifecycle import DAY, settle, texts_to
from test_sender import BAD_GATEWAY

from handlers import _guarded, register_handlers
from outbox import Sender
from tg import RateLimiter, Stopping
from updates import MAX_QUEUED_PER_MEMBER, FairQueue, UpdatePoller
from workers import Sweeper


def outbox(app, kind):
    rows = app.db.connect().execute("SELECT status, count(*) FROM outbox WHERE kind = ? GROUP BY status",
                                    (kind,)).fetchall()
    return [tuple(row) for row in rows]


def drain(app):
    sender = Sender(app)
    while sender.run_once():
        pass


# --- a ban is always followed by its unban ---

def test_a_member_who_renews_while_a_removal_is_half_done_ends_up_in_not_banned(app, telegram, cryptopay, clock):
    expires_at = member_with_time(app)
    telegram.fail("unbanChatMember", BAD_GATEWAY)  # banned, then the unban fails
    clock.value = expires_at
    settle(app, rounds=1)
    assert (CLUB_CHAT, 501) in telegram.banned
    paid(app, cryptopay)  # pays before the removal's retry
    drain(app)  # the activation comes first: it lifts the ban before giving the way in
    assert (CLUB_CHAT, 501) not in telegram.banned
    assert "active until" in texts_to(telegram, 501)[-1]
    clock.advance(120)
    settle(app)  # the removal's retry: renewed, and no ban of ours is left
    assert (CLUB_CHAT, 501) not in telegram.banned
    assert app.db.our_bans(501) == []
    assert outbox(app, "expire") == [("sent", 1)]


def test_a_removal_retried_after_the_member_renewed_still_lifts_its_ban(app, telegram, cryptopay, clock):
    """The activation's way in fails too; the removal's retry comes first and lifts the ban."""
    expires_at = member_with_time(app)
    telegram.fail("unbanChatMember", BAD_GATEWAY)
    clock.value = expires_at
    settle(app, rounds=1)
    with app.db.transaction() as tx:  # renewed by hand, as an admin's grant would, with no message
        tx.execute("UPDATE subscriptions SET expires_at = ? WHERE user_id = 501", (clock.now() + 30 * DAY,))
    clock.advance(120)
    Sender(app).run_once()
    assert (CLUB_CHAT, 501) not in telegram.banned
    assert app.db.our_bans(501) == []


def test_a_ban_that_may_not_have_been_made_is_asked_again_before_the_unban(app, telegram, clock):
    expires_at = member_with_time(app)
    telegram.fail("banChatMember", BAD_GATEWAY)  # did it ban? A retry cannot know: ban, then unban
    clock.value = expires_at
    for _ in range(3):
        settle(app, rounds=1)
        clock.advance(60)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    assert (CLUB_CHAT, 501) not in telegram.banned


# --- a moderator's ban is theirs ---

def test_expiry_does_not_lift_a_ban_made_by_the_chats_moderators(app, telegram, clock):
    expires_at = member_with_time(app)
    telegram.banned.add((CLUB_CHAT, 501))  # banned by hand, for abuse
    clock.value = expires_at
    settle(app)
    assert (CLUB_CHAT, 501) in telegram.banned
    assert telegram.called("unbanChatMember") == [] and telegram.called("banChatMember") == []
    assert outbox(app, "expire") == [("sent", 1)]


def test_a_member_banned_by_moderators_who_pays_is_not_let_back_in_by_clubbot(app, telegram, cryptopay, clock):
    expires_at = member_with_time(app)
    telegram.banned.add((CLUB_CHAT, 501))
    clock.value = expires_at
    settle(app)
    paid(app, cryptopay)
    drain(app)
    assert (CLUB_CHAT, 501) in telegram.banned
    assert telegram.called("unbanChatMember") == []


def test_a_member_who_left_on_their_own_is_not_banned_at_expiry(app, telegram, clock):
    expires_at = member_with_time(app)
    telegram.statuses[(CLUB_CHAT, 501)] = "left"
    clock.value = expires_at
    settle(app)
    assert telegram.called("banChatMember") == []
    assert any("has ended" in t for t in texts_to(telegram, 501))


# --- nothing queued before a revoke lets the member in ---

def test_a_revoked_member_is_not_approved_by_a_way_in_queued_before_the_revoke(bot, app, telegram, clock):
    """grant, /start (its message fails with 502), revoke, join request: the retried row must not approve."""
    command(bot, "/grant 501 30d", user_id=ADMIN)
    command(bot, "/start")  # the greeting, and a "way in" row
    telegram.fail("sendMessage", BAD_GATEWAY, BAD_GATEWAY)  # the grant's and the way in's messages fail
    Sender(app).run_once()
    assert outbox(app, "way_in") == [("pending", 1)]
    command(bot, "/revoke 501", user_id=ADMIN)
    ask_to_join(bot)  # with the personal link the member still holds: it waits
    clock.advance(600)  # the old rows' retries are due, the revoke's removal too
    settle(app)
    assert telegram.called("approveChatJoinRequest") == []
    assert any("To join" in text for text in texts_to(telegram, 501))
    assert outbox(app, "way_in") == [("sent", 1)]  # done: dropped at delivery
    clock.advance(DAY + 60)
    settle(app)
    assert len(telegram.called("declineChatJoinRequest")) == 1


def test_an_activation_queued_before_a_revoke_is_dropped_at_delivery(app, telegram, cryptopay, clock):
    paid(app, cryptopay)
    app.db.revoke(501, app.now(), "test")
    drain(app)
    assert not [t for t in texts_to(telegram, 501) if "active until" in t]
    assert telegram.called("createChatInviteLink") == []


# --- a clock that jumps ---

class Monotonic:
    """Telegram's pace runs on monotonic time, which a jump of the wall clock does not move."""

    def __init__(self):
        self.value = 0.0

    def __call__(self) -> float:
        return self.value

    def sleep(self, seconds: float, stop=None) -> bool:
        self.value += seconds
        return False


@pytest.fixture
def jumpy(app):
    monotonic = Monotonic()
    app.limiter = RateLimiter(1000, monotonic=monotonic, sleep=monotonic.sleep)
    return app


def test_a_removal_done_while_the_clock_was_ahead_does_not_excuse_the_real_one(jumpy, telegram, clock):
    app = jumpy
    expires_at = member_with_time(app, days=30)
    real = clock.value
    clock.value = expires_at + DAY  # the clock jumps a month ahead
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    clock.value = real + 60  # and is corrected
    settle(app)
    assert "Not in the club yet?" in texts_to(telegram, 501)[-1]  # let back in: they have time
    assert [r["action"] for r in audit_rows(app.db, 501)][-1] == "removal_undone"
    clock.value = expires_at - 1
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    clock.value = expires_at  # the real expiry
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501), (CLUB_CHAT, 501)]
    assert [t for t in texts_to(telegram, 501) if "has ended" in t].__len__() == 2


def test_a_removal_queued_while_the_clock_was_ahead_and_sent_after_is_done_at_the_real_expiry(jumpy, telegram,
                                                                                             clock):
    app = jumpy
    expires_at = member_with_time(app, days=30)
    real = clock.value
    clock.value = expires_at + DAY
    Sweeper(app).sweep_once()  # queued while ahead
    clock.value = real + 60
    Sender(app).run_once()  # delivered after the correction, before any sweep: nothing to remove yet
    assert telegram.removed == []
    settle(app)
    assert telegram.removed == []
    assert "Not in the club yet?" in texts_to(telegram, 501)[-1]
    clock.value = expires_at
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]


# --- floods ---

def test_an_activation_queued_while_the_clock_was_ahead_is_sent_once_it_is_corrected(jumpy, telegram, cryptopay,
                                                                                      clock):
    app = jumpy
    real = clock.value
    clock.advance(40 * DAY)
    paid(app, cryptopay)  # applied while ahead: its message is due "in 40 days"
    clock.value = real + 60
    settle(app, rounds=1)
    assert "active until" in texts_to(telegram, 501)[-1]


def test_a_thousand_link_commands_queue_one_way_in(bot, app, telegram):
    member_with_time(app)
    for _ in range(1000):
        command(bot, "/link")
    assert outbox(app, "way_in") == [("pending", 1)]
    drain(app)
    assert len(telegram.messages_to(501)) == 1


def test_join_requests_sent_again_and_again_queue_one_approval(bot, app, telegram):
    member_with_time(app)
    for _ in range(50):
        ask_to_join(bot)
    assert outbox(app, "approve") == [("pending", 1)]


def test_the_sender_takes_recipients_in_turns(app):
    now = app.now()
    for number in range(300):
        app.db.enqueue("text", 501, {"text": f"n{number}"}, now, priority=0)
    app.db.enqueue("activated", 502, {"expires_at": now + DAY}, now + 1, priority=0)
    due = app.db.due_messages(now + 1, limit=200)
    assert [row["chat_id"] for row in due[:2]] == [501, 502]  # not behind 300 rows of another member


def test_the_fair_queue_gives_each_member_a_turn_and_keeps_each_members_order():
    waits = {1: 0.0, 2: 0.0, 3: 0.0}
    queue = FairQueue(per_key=3, wait_for=lambda key: waits.get(key, 0.0))
    stop = threading.Event()
    for item in range(3):
        assert queue.put(1, f"a{item}")
    assert not queue.put(1, "a3")  # a member's queue is short: a flood is dropped
    queue.put(2, "b0")
    queue.put(3, "c0")
    order = []
    for _ in range(5):
        key, item = queue.take(stop)
        order.append(item)
        queue.done(key)
    assert order == ["a0", "b0", "c0", "a1", "a2"]
    queue.put(1, "a4")
    queue.put(2, "b1")
    waits[1] = 5.0  # member 1's chat must wait: member 2 goes meanwhile
    assert queue.take(stop)[1] == "b1"
    assert queue.take(stop, timeout=0.2) is None


def test_one_member_flooding_the_bot_does_not_delay_another(bot, app, telegram):
    """30 /help from one member, then another member's /start: answered at once, not after 29 s.
    On real time, with a chat's pace (Telegram's one message a second) cut to `pace`: the same
    turns, sooner; the bounds below are counted in it."""
    app.limiter = RateLimiter(1000)  # real time
    app.limiter.PER_CHAT_INTERVAL = pace = 0.4
    for _ in range(30):
        telegram.push_update(message("/help", 501))
    telegram.push_update(message("/start", 502))
    poller = UpdatePoller(app)
    poller.start_handlers()
    started = time.monotonic()
    try:
        poller.fetch_once(long_poll=0)
        wait_for(lambda: telegram.messages_to(502), timeout=10, step=0.01)
        answered_in = time.monotonic() - started
        assert answered_in < 1.5 * pace, answered_in
        wait_for(lambda: len(telegram.messages_to(501)) >= MAX_QUEUED_PER_MEMBER, timeout=15)
    finally:
        app.stop.set()
    time.sleep(1.2 * pace)  # the point: an answer beyond the short queue would have come by now
    # The flooder is answered at a chat's pace, and only a short queue of it: the rest is dropped.
    assert len(telegram.messages_to(501)) <= MAX_QUEUED_PER_MEMBER + 1
    statuses = dict(app.db.connect().execute("SELECT status, count(*) FROM updates GROUP BY status").fetchall())
    assert statuses.get("dropped", 0) >= 30 - MAX_QUEUED_PER_MEMBER - 1


# --- each update once ---

def admin_update(update_id, text):
    return {"update_id": update_id, **message(text, ADMIN)}


def handle_twice(app, update):
    """Handle a stored update, then again as a restart after a kill before it was marked would."""
    poller = UpdatePoller(app)
    body = json.dumps(update)
    app.db.store_updates([(update["update_id"], ADMIN, body)], app.now())
    poller.handle(update["update_id"], body)
    with app.db.transaction() as tx:
        tx.execute("UPDATE updates SET status = 'pending' WHERE update_id = ?", (update["update_id"],))
    [row] = app.db.pending_updates()
    poller.handle(row["update_id"], row["body"])


def test_a_grant_handled_again_after_a_kill_gives_its_time_once(bot, app, telegram):
    handle_twice(app, admin_update(10, "/grant 501 30d"))
    assert app.db.expires_at(501) == START + 30 * DAY  # not 60 days
    assert [r["action"] for r in audit_rows(app.db, 501)] == ["granted"]
    answers = texts_to(telegram, ADMIN)
    assert len(answers) == 2 and all("active until" in t for t in answers)  # answered both times


def test_a_broadcast_handled_again_after_a_kill_is_sent_once(bot, app, telegram):
    member_with_time(app, 501)
    handle_twice(app, admin_update(11, "/broadcast hello"))
    drain(app)
    assert texts_to(telegram, 501) == ["hello"]
    assert len(app.db.connect().execute("SELECT * FROM broadcasts").fetchall()) == 1


def test_a_revoke_handled_again_after_a_kill_is_recorded_once(bot, app, telegram):
    member_with_time(app, 501)
    handle_twice(app, admin_update(12, "/revoke 501"))
    assert [r["action"] for r in audit_rows(app.db, 501)].count("revoked") == 1


def test_an_update_fetched_again_after_a_restart_is_not_handled_again(bot, app, telegram):
    update = telegram.push_update(message("/grant 501 30d", ADMIN))
    first = UpdatePoller(app)
    first.fetch_once(long_poll=0)  # kept, then killed before the next getUpdates confirmed it
    [row] = app.db.pending_updates()
    first.handle(row["update_id"], row["body"])
    second = UpdatePoller(app)  # a restart: Telegram sends it again
    assert second.fetch_once(long_poll=0) == 1
    assert second.queue.waiting() == 0
    assert app.db.expires_at(501) == START + 30 * DAY
    assert update["update_id"] == row["update_id"]


# --- a group upgraded to a supergroup ---

OLD_GROUP, SUPERGROUP = -4000001, -1004000001


@pytest.fixture
def upgraded(make_app, telegram):
    """A club whose CLUB_CHAT_IDS still names a group that Telegram has upgraded."""
    app = make_app(CLUB_CHAT_IDS=str(OLD_GROUP))
    app.db.upsert_member(ADMIN, "boss", "Boss", "en", app.now())
    telegram.migrated[OLD_GROUP] = SUPERGROUP
    return app


def test_a_club_group_upgraded_to_a_supergroup_keeps_working(upgraded, telegram, cryptopay, clock):
    app = upgraded
    paid(app, cryptopay)
    drain(app)
    [link] = telegram.called("createChatInviteLink")[-1:]
    assert int(link["chat_id"]) == SUPERGROUP  # followed at once, not an error for the member
    assert "active until" in texts_to(telegram, 501)[-1]
    [alert] = [t for t in texts_to(telegram, ADMIN) if "supergroup" in t]
    assert str(SUPERGROUP) in alert and str(OLD_GROUP) in alert and "CLUB_CHAT_IDS" in alert
    register_handlers(app.bot, app)
    ask_to_join(app.bot, chat_id=SUPERGROUP)  # the new chat's requests are the club's
    drain(app)
    assert [int(a["chat_id"]) for a in telegram.called("approveChatJoinRequest")] == [SUPERGROUP]
    clock.advance(30 * DAY)
    settle(app)
    assert telegram.removed == [(SUPERGROUP, 501)]
    assert len([t for t in texts_to(telegram, ADMIN) if "supergroup" in t]) == 1  # told once


def test_the_migration_is_remembered_across_a_restart(upgraded, make_config, clock, telegram, cryptopay):
    from runtime import build_app

    paid(upgraded, cryptopay)
    drain(upgraded)
    restarted = build_app(make_config(CLUB_CHAT_IDS=str(OLD_GROUP)), clock=clock)
    assert restarted.club_chats() == (SUPERGROUP,)
    restarted.db.close()


def test_the_service_message_of_an_upgrade_is_followed(upgraded, telegram):
    app = upgraded
    register_handlers(app.bot, app)
    feed(app.bot, group_upgraded(OLD_GROUP, SUPERGROUP))
    assert app.club_chats() == (SUPERGROUP,)
    assert app.db.chat_migrations() == {OLD_GROUP: SUPERGROUP}


def test_check_says_which_id_to_write_for_an_upgraded_group(tmp_path, env, telegram):
    from test_admin import run_cli

    telegram.migrated[OLD_GROUP] = SUPERGROUP
    code, out, _ = run_cli(env | {"CLUB_CHAT_IDS": str(OLD_GROUP)}, tmp_path, "check")
    assert code == 1
    assert (f"FAIL  chat {OLD_GROUP} was upgraded to a supergroup and its id is now {SUPERGROUP}: "
            f"write {SUPERGROUP} instead of {OLD_GROUP} in CLUB_CHAT_IDS") in out


# --- a broadcast's progress ---

def test_a_broadcast_whose_rows_all_go_before_its_progress_message_still_shows_the_last_count(bot, app, telegram):
    for user in (501, 502, 503):
        member_with_time(app, user)
    command(bot, "/broadcast hi", user_id=ADMIN)
    sender = Sender(app)
    rows = app.db.due_messages(app.now())
    progress = [row for row in rows if row["kind"] == "broadcast_started"]
    for row in [row for row in rows if row["kind"] == "broadcast"] + progress:  # the members' rows first
        sender.deliver(row)
    [shown] = [m["text"] for m in telegram.messages_to(ADMIN)]
    edits = [e["text"] for e in telegram.called("editMessageText")]
    assert (edits or [shown])[-1] == "Broadcast finished: 3 sent, 0 failed, of 3."


def test_a_broadcast_progress_message_sent_midway_ends_on_the_last_count(bot, app, telegram):
    for user in (501, 502, 503):
        member_with_time(app, user)
    command(bot, "/broadcast hi", user_id=ADMIN)
    sender = Sender(app)
    rows = {row["chat_id"]: row for row in app.db.due_messages(app.now())}
    sender.deliver(rows[501])
    sender.deliver(rows[ADMIN])  # the progress message, after one member's
    assert telegram.messages_to(ADMIN)[-1]["text"] == "Broadcast to 3 members: 1 sent, 0 failed."
    sender.deliver(rows[502])
    sender.deliver(rows[503])
    assert telegram.called("editMessageText")[-1]["text"] == "Broadcast finished: 3 sent, 0 failed, of 3."


# --- found in review: each a sequence that went wrong ---

def test_a_ban_that_cannot_be_lifted_now_does_not_cost_a_paying_member_the_activation(app, telegram, cryptopay,
                                                                                      clock):
    expires_at = member_with_time(app)
    telegram.fail("unbanChatMember", BAD_GATEWAY)
    clock.value = expires_at
    settle(app, rounds=1)  # banned; the unban failed
    telegram.rights_lost.add(CLUB_CHAT)  # and now the bot cannot lift it
    paid(app, cryptopay)
    drain(app)
    assert "active until" in texts_to(telegram, 501)[-1]  # told at once, not after the rights return
    assert outbox(app, "lift_ban") == [("pending", 1)]
    telegram.rights_lost.discard(CLUB_CHAT)
    clock.advance(600)
    settle(app)
    assert (CLUB_CHAT, 501) not in telegram.banned
    assert app.db.our_bans(501) == []
    assert outbox(app, "lift_ban") == [("sent", 1)]


def test_a_ban_refused_outright_leaves_no_ban_to_lift(app, telegram, cryptopay, clock):
    expires_at = member_with_time(app)
    telegram.fail("banChatMember", (400, {"ok": False, "error_code": 400,  # refused: Telegram made no ban
                                          "description": "Bad Request: not enough rights to restrict/ban chat member"}))
    clock.value = expires_at
    Sweeper(app).sweep_once()
    Sender(app).run_once()
    assert outbox(app, "expire") == [("pending", 1)]  # retried later
    assert app.db.our_bans(501) == []
    paid(app, cryptopay)
    drain(app)
    assert "active until" in texts_to(telegram, 501)[-1]
    assert outbox(app, "lift_ban") == []


def test_a_handler_thread_outlives_a_database_that_fails_for_a_moment(bot, app, telegram, monkeypatch):
    import sqlite3

    poller = UpdatePoller(app, threads=1)
    poller.start_handlers()
    real = app.db.update_done
    failures = [sqlite3.OperationalError("database is locked")]

    def flaky(*args, **kwargs):
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(app.db, "update_done", flaky)
    try:
        for user in (501, 502):
            telegram.push_update(message("/help", user))
            poller.fetch_once(long_poll=0)
            wait_for(lambda user=user: telegram.messages_to(user), timeout=5)
        assert poller._handlers[0].is_alive()
        assert app.heartbeats.problems(app.db) == []
    finally:
        app.stop.set()


def test_an_update_cut_short_by_a_stop_stays_pending_and_its_handler_thread_ends_quietly(app, telegram,
                                                                                        monkeypatch):
    died = []
    monkeypatch.setattr(threading, "excepthook", died.append)

    def stopping(app, message):  # as a Bot API call through the shared budget does when the process stops
        app.stop.set()
        raise Stopping()

    app.bot.register_message_handler(_guarded(app, stopping), commands=["help"])
    poller = UpdatePoller(app, threads=1)
    poller.start_handlers()
    telegram.push_update(message("/help", 501))
    poller.fetch_once(long_poll=0)
    poller._handlers[0].join(5)
    assert not poller._handlers[0].is_alive()
    assert died == []  # ended by its loop, not by the exception
    assert len(app.db.pending_updates()) == 1  # handled again after the restart


def test_a_flood_never_drops_a_join_request_or_an_admins_command(bot, app, telegram):
    member_with_time(app)
    app.limiter = RateLimiter(1000)  # real time: one message a second per chat
    for _ in range(3 * MAX_QUEUED_PER_MEMBER):
        telegram.push_update(message("/status", 501))
    telegram.push_update(join_request(501))
    boss = person(ADMIN, first_name="Boss")
    for n in range(3 * MAX_QUEUED_PER_MEMBER):
        telegram.push_update(message(f"/grant {600 + n} 1d", sender=boss))
    poller = UpdatePoller(app)
    poller.fetch_once(long_poll=0)
    statuses = dict(app.db.connect().execute(
        "SELECT update_id, status FROM updates").fetchall())
    kept = [json.loads(body) for (body,) in app.db.connect().execute(
        "SELECT body FROM updates WHERE status = 'pending'")]
    assert any("chat_join_request" in update for update in kept)
    assert sum(update.get("message", {}).get("from", {}).get("id") == ADMIN for update in kept) == 15
    assert list(statuses.values()).count("dropped") == 3 * MAX_QUEUED_PER_MEMBER - MAX_QUEUED_PER_MEMBER
    app.stop.set()


def test_a_revoke_made_while_the_clock_ran_ahead_gives_no_time_back_when_it_is_corrected(jumpy, telegram, clock):
    app = jumpy
    register_handlers(app.bot, app)
    member_with_time(app, days=30)
    real = clock.value
    clock.advance(10 * DAY)
    command(app.bot, "/revoke 501", user_id=ADMIN)
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    clock.value = real + 60  # corrected: the revoke's moment is 10 days in the future
    settle(app)
    command(app.bot, "/status")
    assert texts_to(telegram, 501)[-1].startswith("Your membership ended on")
    ask_to_join(app.bot)
    settle(app)
    assert telegram.called("approveChatJoinRequest") == []
    assert not [t for t in texts_to(telegram, 501) if "Not in the club yet?" in t]
    assert [r["action"] for r in audit_rows(app.db, 501)].count("removal_undone") == 0


def test_a_removal_queued_before_a_revoke_does_not_remove_again_after_it(make_app, clock, telegram):
    app = make_app(GRACE_PERIOD="1d")
    expires_at = member_with_time(app)
    clock.value = expires_at + DAY
    Sweeper(app).sweep_once()  # the expiry's removal, queued
    app.db.revoke(501, app.now(), "test")  # and a revoke before it was sent
    drain(app)
    clock.advance(DAY)
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    assert len([t for t in texts_to(telegram, 501) if "has ended" in t]) == 1


def test_a_grant_asked_again_after_a_kill_near_the_limit_says_done(bot, app, telegram):
    handle_twice(app, admin_update(13, "/grant 501 20000d"))
    answers = texts_to(telegram, ADMIN)
    assert len(answers) == 2 and all("active until" in t for t in answers), answers
    assert [r["action"] for r in audit_rows(app.db, 501)] == ["granted"]


def test_a_removal_queued_while_the_clock_ran_ahead_waits_out_the_grace_it_comes_back_into(make_app, clock,
                                                                                           telegram):
    app = make_app(GRACE_PERIOD="1d")
    monotonic = Monotonic()
    app.limiter = RateLimiter(1000, monotonic=monotonic, sleep=monotonic.sleep)
    expires_at = member_with_time(app, days=30)
    clock.value = expires_at + 3 * DAY  # ahead
    Sweeper(app).sweep_once()  # queued while ahead
    clock.value = expires_at + 3600  # corrected: inside the grace period
    settle(app)
    assert telegram.removed == []
    clock.value = expires_at + DAY + 60
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    app.db.close()


def test_a_broadcast_row_finished_while_the_progress_message_was_on_its_way_is_counted(bot, app, telegram,
                                                                                       monkeypatch):
    for user in (501, 502):
        member_with_time(app, user)
    command(bot, "/broadcast hi", user_id=ADMIN)
    sender = Sender(app)
    rows = {row["chat_id"]: row for row in app.db.due_messages(app.now())}
    real = app.db.set_broadcast_message

    def meanwhile(broadcast_id, message_id):  # another lane finishes the members' rows first
        sender.deliver(rows[501])
        sender.deliver(rows[502])
        real(broadcast_id, message_id)

    monkeypatch.setattr(app.db, "set_broadcast_message", meanwhile)
    sender.deliver(rows[ADMIN])
    assert telegram.messages_to(ADMIN)[-1]["text"] == "Broadcast to 2 members: 0 sent, 0 failed."
    assert telegram.called("editMessageText")[-1]["text"] == "Broadcast finished: 2 sent, 0 failed, of 2."


def test_an_upgrade_message_from_a_chat_that_is_not_the_clubs_changes_nothing(upgraded, telegram):
    app = upgraded
    register_handlers(app.bot, app)
    feed(app.bot, group_upgraded(-4000999, -1004000999, title="Elsewhere", user_id=666))
    assert app.club_chats() == (OLD_GROUP,)
    assert app.db.chat_migrations() == {}


def test_migrations_that_lead_in_a_circle_still_name_each_club_chat_once(make_app):
    app = make_app(CLUB_CHAT_IDS=f"{OLD_GROUP},{CLUB_CHAT}")
    app.chat_migrations.update({OLD_GROUP: SUPERGROUP, SUPERGROUP: OLD_GROUP, CLUB_CHAT: SUPERGROUP})
    assert sorted(app.club_chats()) == sorted({OLD_GROUP, SUPERGROUP})
