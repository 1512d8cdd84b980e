"""The outbox sender against the fake Bot API: the way in, retries, 429s and give-ups."""
import json
import logging

import pytest
from builders import paid
from conftest import ADMIN, CLUB_CHAT, START

from outbox import Sender

FLOOD = (429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
               "parameters": {"retry_after": 1}})
BAD_GATEWAY = (502, b"<html><body>502 Bad Gateway</body></html>")
BLOCKED = (403, {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"})
NO_REQUEST = (400, {"ok": False, "error_code": 400, "description": "Bad Request: HIDE_REQUESTER_MISSING"})


def markup(message: dict) -> dict:
    return json.loads(message["reply_markup"])


def test_an_activation_brings_active_until_and_a_personal_link_that_asks_to_join(app, cryptopay, telegram):
    paid(app, cryptopay)
    assert Sender(app).run_once() == 1
    [message] = telegram.messages_to(501)
    assert "active until 14 February 2027, 08:00 UTC (30 days left)" in message["text"]
    [[button]] = markup(message)["inline_keyboard"]
    assert button["url"] == "https://t.me/+fake1"
    [link] = telegram.called("createChatInviteLink")
    assert int(link["chat_id"]) == CLUB_CHAT and link["creates_join_request"] == "True"
    assert app.db.invite_link(501, CLUB_CHAT) == "https://t.me/+fake1"
    assert Sender(app).run_once() == 0  # sent once, nothing left


def test_texts_follow_the_members_language(app, cryptopay, telegram):
    paid(app, cryptopay, lang="ru")
    Sender(app).run_once()
    [message] = telegram.messages_to(501)
    assert "активна до 14 февраля 2027, 08:00 UTC (осталось 30 дней)" in message["text"]


def test_a_waiting_join_request_is_approved_instead_of_a_link(app, cryptopay, telegram):
    app.db.upsert_member(501, "member", "Member", "en", app.now())
    app.db.record_join_request(CLUB_CHAT, 501, 501, app.now())
    paid(app, cryptopay)
    Sender(app).run_once()
    [approval] = telegram.called("approveChatJoinRequest")
    assert (int(approval["chat_id"]), int(approval["user_id"])) == (CLUB_CHAT, 501)
    assert telegram.called("createChatInviteLink") == []
    [message] = telegram.messages_to(501)
    assert "approved" in message["text"] and "reply_markup" not in message
    assert app.db.waiting_join_chats(501) == []


def test_a_request_that_is_gone_falls_back_to_a_link(app, cryptopay, telegram):
    app.db.upsert_member(501, "member", "Member", "en", app.now())
    app.db.record_join_request(CLUB_CHAT, 501, 501, app.now())
    telegram.fail("approveChatJoinRequest", NO_REQUEST)
    paid(app, cryptopay)
    Sender(app).run_once()
    [message] = telegram.messages_to(501)
    assert markup(message)["inline_keyboard"][0][0]["url"].startswith("https://t.me/+fake")


def test_a_message_survives_429_then_502_and_arrives_once(app, cryptopay, telegram, clock, caplog):
    paid(app, cryptopay)
    telegram.fail("sendMessage", FLOOD, BAD_GATEWAY)
    sender = Sender(app)
    with caplog.at_level(logging.WARNING):
        sender.run_once()  # 429: wait retry_after
        assert telegram.messages_to(501) == []
        assert sender.run_once() == 0  # not before retry_after
        clock.advance(1)
        sender.run_once()  # 502: back off
        assert telegram.messages_to(501) == []
        clock.advance(1)
        sender.run_once()
    assert len(telegram.messages_to(501)) == 1
    assert len(telegram.called("sendMessage")) == 3
    assert "asks to wait 1s" in caplog.text and "HTTP 502" in caplog.text
    clock.advance(3600)
    assert sender.run_once() == 0
    assert len(telegram.called("createChatInviteLink")) == 1  # the link was kept, not made again


def test_a_member_who_blocked_the_bot_is_given_up_with_a_log_line(app, cryptopay, telegram, caplog):
    paid(app, cryptopay)
    telegram.fail("sendMessage", BLOCKED)
    with caplog.at_level(logging.WARNING):
        Sender(app).run_once()
    assert "blocked the bot" in caplog.text
    row = app.db.connect().execute("SELECT status, last_error FROM outbox").fetchone()
    assert row["status"] == "failed" and "403" in row["last_error"]
    assert Sender(app).run_once() == 0


def test_a_message_is_given_up_after_three_days_of_failures(app, cryptopay, telegram, clock):
    paid(app, cryptopay)
    telegram.fail("sendMessage", *[BAD_GATEWAY] * 100)
    sender = Sender(app)
    for _ in range(80):
        sender.run_once()
        clock.advance(3600)
        if app.db.connect().execute("SELECT status FROM outbox").fetchone()[0] == "failed":
            break
    assert 3 * 86400 <= clock.now() - START <= 3 * 86400 + 2 * 3600
    assert app.db.connect().execute("SELECT status FROM outbox").fetchone()[0] == "failed"


def test_admins_hear_of_a_mismatch(app, cryptopay, telegram):
    paid(app, cryptopay, amount="1")
    Sender(app).run_once()
    [alert] = telegram.messages_to(ADMIN)
    assert "asked 5 USDT, paid 1 USDT" in alert["text"] or "запрошено 5 USDT, оплачено 1 USDT" in alert["text"]
    [told] = telegram.messages_to(501)
    assert "does not match" in told["text"]


def test_the_sender_thread_delivers_at_once_when_woken(app, cryptopay, telegram):
    import threading

    from conftest import wait_for

    thread = threading.Thread(target=Sender(app).run, daemon=True)
    thread.start()
    paid(app, cryptopay)
    app.wake_sender()
    wait_for(lambda: telegram.messages_to(501), timeout=5)
    app.stop.set()
    app.outbox_ready.set()
    thread.join(5)
    assert not thread.is_alive()


def test_a_chat_without_an_invite_link_does_not_cost_the_member_the_message(app, cryptopay, telegram):
    refused = {"ok": False, "error_code": 400, "description": "Bad Request: not enough rights to manage invite links"}
    telegram.fail("createChatInviteLink", (400, refused))
    paid(app, cryptopay)
    Sender(app).run_once()
    [message] = telegram.messages_to(501)
    assert "active until" in message["text"]
    assert app.db.connect().execute("SELECT status FROM outbox").fetchone()[0] == "sent"


@pytest.mark.parametrize(("code", "description", "reason"), [
    (400, "Bad Request: not enough rights to restrict/ban chat member", "no_rights"),
    (400, "Bad Request: chat not found", "no_rights"),
    (400, "Bad Request: user is an administrator of the chat", "admin"),
    (400, "Bad Request: can't remove chat owner", "admin"),
    (400, "Bad Request: PARTICIPANT_ID_INVALID", ""),
])
def test_why_the_bot_api_refused_is_read_in_one_place(code, description, reason):
    from telebot.apihelper import ApiTelegramException

    from tg import classify

    error = ApiTelegramException("banChatMember", None, {"ok": False, "error_code": code, "description": description})
    assert classify(error).reason == reason
