"""The membership lifecycle on the injected clock: the gate, reminders, expiry, renewal, rights."""
import json

import pytest
from builders import ask_to_join, audit_rows, buttons, command, member_with_time, paid, press
from conftest import ADMIN, CLUB_CHAT, START
from test_sender import BAD_GATEWAY, FLOOD

from outbox import Sender
from runtime import build_app
from workers import Sweeper

DAY = 86400
SECOND_CHAT = -1001000000002


def settle(app, rounds=5):
    """Sweep, then let the sender do everything due."""
    sweeper, sender = Sweeper(app), Sender(app)
    for _ in range(rounds):
        sweeper.sweep_once()
        while sender.run_once():
            pass


def texts_to(telegram, chat_id):
    return [m["text"] for m in telegram.messages_to(chat_id)]


# --- the gate ---

def test_a_join_request_waits_a_day_for_payment_then_is_declined(bot, app, telegram, clock):
    ask_to_join(bot)
    settle(app)
    assert telegram.called("declineChatJoinRequest") == []
    clock.advance(DAY - 60)
    settle(app)
    assert telegram.called("declineChatJoinRequest") == []
    clock.advance(120)
    settle(app)
    [declined] = telegram.called("declineChatJoinRequest")
    assert (int(declined["chat_id"]), int(declined["user_id"])) == (CLUB_CHAT, 501)
    settle(app)
    assert len(telegram.called("declineChatJoinRequest")) == 1


def test_a_request_from_a_non_member_is_approved_the_moment_they_pay(bot, app, telegram, cryptopay):
    ask_to_join(bot)
    settle(app)
    assert telegram.called("approveChatJoinRequest") == []
    paid(app, cryptopay)
    Sender(app).run_once()
    [approval] = telegram.called("approveChatJoinRequest")
    assert int(approval["user_id"]) == 501
    assert telegram.called("createChatInviteLink") == []


def test_a_passed_on_link_lets_no_one_in(bot, app, telegram):
    member_with_time(app, 501)
    command(bot, "/link")
    settle(app)
    assert buttons(telegram.messages_to(501)[-1])[0]["url"].startswith("https://t.me/+fake")
    ask_to_join(bot, user_id=600)  # someone else uses the member's link
    settle(app)
    assert telegram.called("approveChatJoinRequest") == []
    assert "To join" in texts_to(telegram, 600)[-1]


def test_link_gives_a_paying_member_the_way_in_again_and_others_the_plans(bot, app, telegram):
    command(bot, "/link", user_id=700)
    assert texts_to(telegram, 700)[-1].startswith("You have no active membership")
    member_with_time(app, 501)
    command(bot, "/link")
    command(bot, "/link")  # while the first waits: one way in
    settle(app)
    assert len(telegram.messages_to(501)) == 1
    command(bot, "/link")
    settle(app)
    links = [buttons(m)[0]["url"] for m in telegram.messages_to(501)]
    assert len(links) == 2 and links[0] == links[1]  # the personal link is kept
    assert len(telegram.called("createChatInviteLink")) == 1


# --- reminders ---

def test_reminders_go_out_once_at_each_point_with_renew_buttons(app, telegram, clock):
    expires_at = member_with_time(app)
    clock.advance(26 * DAY)
    settle(app)
    assert texts_to(telegram, 501) == []
    clock.advance(DAY + 60)  # 3 days before
    settle(app)
    first = telegram.messages_to(501)
    assert len(first) == 1 and first[0]["text"].startswith("Your membership ends on")
    assert [b["callback_data"] for b in buttons(first[0])] == ["plan:month", "plan:year"]
    for _ in range(3):
        clock.advance(3600)
        settle(app)
    assert len(telegram.messages_to(501)) == 1
    clock.value = expires_at - DAY + 1  # 1 day before
    settle(app)
    settle(app)
    assert len(telegram.messages_to(501)) == 2


def test_a_reminder_is_sent_once_although_the_process_restarts(app, telegram, clock, make_config):
    expires_at = member_with_time(app)
    clock.value = expires_at - 2 * DAY
    settle(app)
    app.db.close()
    for _ in range(3):  # the process restarts, and sweeps again
        restarted = build_app(make_config(), clock=clock)
        restarted.bot, restarted.limiter, restarted.bot_username = app.bot, app.limiter, app.bot_username
        settle(restarted)
        restarted.db.close()
    assert len(telegram.messages_to(501)) == 1


def test_only_the_nearest_reminder_goes_out_when_the_bot_was_down_for_both(app, telegram, clock):
    expires_at = member_with_time(app)
    clock.value = expires_at - 12 * 3600
    settle(app)
    [message] = telegram.messages_to(501)
    assert "12 hours left" in message["text"]


def test_no_reminder_for_a_member_who_already_renewed(app, telegram, cryptopay, clock):
    member_with_time(app)
    clock.advance(20 * DAY)
    paid(app, cryptopay)  # renewed early: now 40 days left
    Sender(app).run_once()
    before = len(telegram.messages_to(501))
    clock.advance(8 * DAY)  # where the old expiry's reminders would have been
    settle(app)
    assert len(telegram.messages_to(501)) == before


def test_a_queued_reminder_is_dropped_if_the_member_renews_before_it_is_sent(app, telegram, cryptopay, clock):
    expires_at = member_with_time(app)
    clock.value = expires_at - 2 * DAY
    Sweeper(app).sweep_once()
    paid(app, cryptopay)
    while Sender(app).run_once():
        pass
    assert not [t for t in texts_to(telegram, 501) if t.startswith("Your membership ends")]


def test_a_trial_is_not_reminded_at_a_point_before_it_began(app, telegram, clock, bot):
    press(bot, "plan:trial")  # 3 days: the 3d point is its first second
    settle(app)
    assert len(telegram.messages_to(501)) == 1  # just "active until"
    clock.advance(2 * DAY + 60)
    settle(app)
    assert len(telegram.messages_to(501)) == 2


# --- expiry ---

def test_at_expiry_the_member_is_removed_told_why_and_can_come_back(app, telegram, cryptopay, clock):
    expires_at = member_with_time(app)
    clock.value = expires_at - 1
    settle(app)
    assert telegram.removed == []
    clock.value = expires_at
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    [unban] = telegram.called("unbanChatMember")
    assert unban["only_if_banned"] == "True"  # the ban is lifted so they can return
    notice = telegram.messages_to(501)[-1]
    assert "has ended" in notice["text"] and buttons(notice)[0]["callback_data"] == "plan:month"
    assert [r["action"] for r in audit_rows(app.db, 501)][-2:] == ["membership_expired", "member_removed"]
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]  # once
    renewed_at = clock.now()
    paid(app, cryptopay)  # back again: a new expiry, and the way in
    Sender(app).run_once()
    assert "active until" in telegram.messages_to(501)[-1]["text"]
    assert app.db.expires_at(501) == renewed_at + 30 * DAY


def test_the_grace_period_delays_removal(make_app, clock, telegram, tmp_path):
    app = make_app(GRACE_PERIOD="2d")
    expires_at = member_with_time(app)
    clock.value = expires_at + 2 * DAY - 1
    settle(app)
    assert telegram.removed == []
    clock.value = expires_at + 2 * DAY
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]


def test_admins_and_the_chat_owner_are_never_removed(app, telegram, clock):
    telegram.owners[CLUB_CHAT] = 801
    telegram.admins[CLUB_CHAT] = [802]
    for user_id in (801, 802, ADMIN, 501):
        member_with_time(app, user_id, days=1)
    clock.advance(DAY)
    settle(app)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    assert {int(p["user_id"]) for p in telegram.called("banChatMember")} == {501}


def test_a_removal_that_hits_429_and_502_still_happens(app, telegram, clock):
    expires_at = member_with_time(app)
    telegram.fail("banChatMember", FLOOD, BAD_GATEWAY)
    telegram.fail("unbanChatMember", BAD_GATEWAY)
    clock.value = expires_at
    for _ in range(10):
        settle(app, rounds=1)
        clock.advance(60)
    assert telegram.removed == [(CLUB_CHAT, 501)]
    assert len([m for m in telegram.messages_to(501) if "has ended" in m["text"]]) == 1


def test_a_member_who_renews_after_removal_was_queued_is_not_removed(app, telegram, cryptopay, clock):
    expires_at = member_with_time(app)
    clock.value = expires_at + 10
    Sweeper(app).sweep_once()  # removal queued
    paid(app, cryptopay)
    while Sender(app).run_once():
        pass
    assert telegram.removed == []


def test_every_club_chat_is_opened_and_closed_together(make_app, clock, telegram, cryptopay):
    app = make_app(CLUB_CHAT_IDS=f"{CLUB_CHAT},{SECOND_CHAT}")
    paid(app, cryptopay)
    Sender(app).run_once()
    assert len(buttons(telegram.messages_to(501)[-1])) == 2  # a link for each chat
    clock.advance(30 * DAY)
    settle(app)
    assert sorted(telegram.removed) == sorted([(CLUB_CHAT, 501), (SECOND_CHAT, 501)])


# --- the bot's rights ---

def test_lost_rights_are_alerted_once_and_missed_removals_done_when_they_return(app, telegram, clock):
    expires_at = member_with_time(app, days=1)
    app.db.upsert_member(ADMIN, "boss", "Boss", "en", app.now())
    telegram.rights_lost.add(CLUB_CHAT)
    clock.value = expires_at
    for _ in range(5):
        settle(app, rounds=1)
        clock.advance(60)
    lost = [t for t in texts_to(telegram, ADMIN) if "lost its rights" in t]
    assert len(lost) == 1 and "it is not an admin" in lost[0]
    assert telegram.removed == []
    outbox = app.db.connect().execute("SELECT status FROM outbox WHERE kind = 'expire'").fetchall()
    assert [r[0] for r in outbox] == ["pending"]  # kept, not given up
    telegram.rights_lost.discard(CLUB_CHAT)
    clock.advance(60)
    settle(app, rounds=2)
    back = [t for t in texts_to(telegram, ADMIN) if "are back" in t]
    assert len(back) == 1
    assert telegram.removed == [(CLUB_CHAT, 501)]
    settle(app)
    assert len([t for t in texts_to(telegram, ADMIN) if "rights" in t]) == 2


def test_a_first_look_with_all_rights_alerts_no_one(app, telegram):
    settle(app)
    assert telegram.messages_to(ADMIN) == []
    assert len(telegram.called("getChatMember")) == 5


def test_the_rights_a_group_and_a_channel_need():
    from types import SimpleNamespace

    from access import missing_rights

    admin = SimpleNamespace(status="administrator", can_invite_users=True, can_restrict_members=False)
    assert missing_rights(admin, "supergroup") == ["right_ban"]
    assert missing_rights(admin, "channel") == []
    assert missing_rights(SimpleNamespace(status="creator"), "supergroup") == []
    assert missing_rights(SimpleNamespace(status="left"), "channel") == ["right_admin"]
    no_invite = SimpleNamespace(status="administrator", can_invite_users=False, can_restrict_members=True)
    assert missing_rights(no_invite, "supergroup") == ["right_invite"]


def test_the_alert_names_what_is_missing_in_the_admins_language(app, telegram):
    app.db.upsert_member(ADMIN, "boss", "Boss", "ru", app.now())
    app.db.alert_state(f"rights:{CLUB_CHAT}", True, app.now(), app.config.admin_ids, "admin_rights",
                       {"chat_id": CLUB_CHAT, "missing": ["right_invite", "right_ban"]})
    Sender(app).run_once()
    [alert] = texts_to(telegram, ADMIN)
    assert "не может приглашать пользователей, не может блокировать пользователей" in alert
    payload = json.loads(app.db.connect().execute("SELECT payload FROM outbox").fetchone()[0])
    assert payload["missing"] == ["right_invite", "right_ban"]
    assert START


@pytest.mark.slow  # ten thousand members through the sender: seconds of work even on virtual time
def test_ten_thousand_expiries_against_telegrams_rate_limit_lose_nothing(make_config, clock):
    """10,000 members expire at once; Telegram allows 30 calls a second; ClubBot's budget is 25."""
    from fakes import RateLimitedBot

    from tg import RateLimiter

    app = build_app(make_config(TELEGRAM_RATE="25", REMIND_BEFORE=""), clock=clock)
    app.bot = RateLimitedBot(clock, limit=30)
    app.limiter = RateLimiter(25, monotonic=clock.monotonic, sleep=clock.sleep)
    members = range(100_000, 110_000)
    with app.db.transaction() as tx:
        tx.executemany("INSERT INTO members (user_id, uuid, language, created_at) VALUES (?, ?, 'en', ?)",
                       [(user, f"uuid-{user}", START) for user in members])
        tx.executemany("INSERT INTO subscriptions (user_id, expires_at, period_start, updated_at) "
                       "VALUES (?, ?, ?, ?)", [(user, START + DAY, START, START) for user in members])
    clock.value = START + DAY
    started = clock.monotonic()
    assert Sweeper(app).sweep_once()["expired"] == 10_000
    sender = Sender(app)
    while app.db.next_message_due() is not None:
        if not sender.run_once(limit=500):
            clock.advance(1)
    elapsed = clock.monotonic() - started
    bot = app.bot
    assert sorted(user for _, user in bot.removed) == list(members)  # none lost, none twice
    assert sorted(bot.messages) == list(members)
    assert bot.too_many == 0  # no storm of 429s
    bound = bot.calls / 25  # what the budget allows
    assert elapsed <= 1.2 * bound, (elapsed, bound)
    print(f"10,000 expiries: {bot.calls} calls in {elapsed:.0f} virtual s (bound {bound:.0f} s), "
          f"{bot.too_many} answered 429")


def test_early_renewal_stacks_and_late_renewal_starts_now(app, cryptopay, clock):
    first = paid(app, cryptopay).expires_at
    assert first == START + 30 * DAY
    clock.value = START + 10 * DAY
    assert paid(app, cryptopay).expires_at == first + 30 * DAY  # stacks on the time left
    clock.value = first + 30 * DAY + 5 * DAY  # 5 days after it ran out
    renewed_at = clock.now()
    assert paid(app, cryptopay, plan="year").expires_at == renewed_at + 365 * DAY
    row = app.db.subscription(501)
    assert row["period_start"] == renewed_at
