"""The running bot added to a chat: the admins learn its id, title and what is missing, so
that adding a second club chat needs no wizard."""
from builders import bot_status, feed
from conftest import ADMIN, CLUB_CHAT

from handlers import register_handlers
from outbox import Sender

OTHER_CHAT = -1002000000002


def english_admin(app) -> None:
    app.db.upsert_member(ADMIN, "owner", "Owner", "en", app.now())


def sent_to_admin(app, telegram) -> list[str]:
    Sender(app).run_once()
    return [m["text"] for m in telegram.messages_to(ADMIN)]


def test_an_admin_adding_the_bot_to_a_new_chat_is_told_its_id_title_and_missing_right(app, telegram):
    register_handlers(app.bot, app)
    english_admin(app)
    update = bot_status(OTHER_CHAT, "VIP lounge", can_invite_users=False)
    feed(app.bot, update)
    feed(app.bot, update)  # the same update handled again (a restart): told once
    [text] = sent_to_admin(app, telegram)
    assert "VIP lounge" in text and str(OTHER_CHAT) in text and "CLUB_CHAT_IDS" in text
    assert "invite" in text.lower()


def test_with_every_right_the_admin_is_told_it_is_enough(app, telegram):
    register_handlers(app.bot, app)
    english_admin(app)
    feed(app.bot, bot_status(OTHER_CHAT, "VIP lounge"))
    [text] = sent_to_admin(app, telegram)
    assert "enough" in text and str(OTHER_CHAT) in text


def test_a_stranger_adding_the_bot_to_their_group_tells_the_admins_nothing(app, telegram):
    register_handlers(app.bot, app)
    english_admin(app)
    feed(app.bot, bot_status(OTHER_CHAT, "Spam group", by=4242))
    feed(app.bot, bot_status(OTHER_CHAT, "Spam group", status="left"))
    assert sent_to_admin(app, telegram) == []


def test_the_bot_losing_a_right_in_a_club_chat_is_checked_at_once(app, telegram):
    register_handlers(app.bot, app)
    english_admin(app)
    telegram.rights_lost.add(CLUB_CHAT)  # what getChatMember answers from now on
    feed(app.bot, bot_status(CLUB_CHAT, "Club", status="member", by=4242))
    [text] = sent_to_admin(app, telegram)
    assert "lost its rights" in text
    assert telegram.called("getChatMember") == []  # the update said so: nothing to ask


def test_added_then_given_the_missing_right_in_the_same_second_tells_both(app, telegram):
    register_handlers(app.bot, app)
    english_admin(app)
    added = bot_status(OTHER_CHAT, "VIP lounge", can_invite_users=False)
    promoted = bot_status(OTHER_CHAT, "VIP lounge")
    promoted["my_chat_member"]["date"] = added["my_chat_member"]["date"]
    feed(app.bot, added, promoted)
    texts = sent_to_admin(app, telegram)
    assert len(texts) == 2 and "still needs" in texts[0] and "enough" in texts[1]
