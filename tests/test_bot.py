"""The member's side in Telegram: hand-built updates through the real handlers and the fake Bot API."""
from builders import ask_to_join, buttons, command, press
from conftest import ADMIN

from outbox import Sender


def last_message(telegram, chat_id=501) -> dict:
    return telegram.messages_to(chat_id)[-1]


def test_start_greets_and_offers_every_plan_as_a_button(bot, telegram):
    command(bot, "/start")
    message = last_message(telegram)
    assert message["text"].startswith("Welcome to @club_test_bot")
    labels = [(b["text"], b["callback_data"]) for b in buttons(message)]
    assert labels == [("30 days: 5 USDT", "plan:month"), ("365 days: 50 USDT", "plan:year"),
                      ("3 days: free trial", "plan:trial"), ("🎁 Give as a gift", "gifts")]


def test_start_speaks_russian_to_a_russian_member(bot, telegram):
    command(bot, "/start", lang="ru")
    message = last_message(telegram)
    assert message["text"].startswith("Добро пожаловать")
    assert buttons(message)[0]["text"] == "30 дней: 5 USDT"


def test_a_language_neither_russian_nor_english_gets_the_default(bot, telegram, app):
    command(bot, "/start", lang="de")
    assert last_message(telegram)["text"].startswith("Добро пожаловать")  # DEFAULT_LANGUAGE=ru


def test_a_plan_button_brings_an_invoice_with_pay_and_check_buttons(bot, telegram, cryptopay):
    command(bot, "/start")
    press(bot, "plan:month")
    message = last_message(telegram)
    assert "30 days: 5 USDT" in message["text"]
    pay, check = buttons(message)
    assert pay["url"] == "https://t.me/CryptoBot?start=IV1001" and pay["text"] == "Pay 5 USDT"
    assert check["callback_data"].startswith("check:")
    assert len(telegram.called("answerCallbackQuery")) == 1
    press(bot, "plan:month")  # the same unexpired invoice again
    assert buttons(last_message(telegram))[0]["url"] == pay["url"]
    assert len(cryptopay.called("createInvoice")) == 1


def test_check_payment_activates_and_the_sender_brings_the_way_in(bot, telegram, cryptopay, app):
    press(bot, "plan:month")
    check_data = buttons(last_message(telegram))[1]["callback_data"]
    press(bot, check_data)
    assert telegram.called("answerCallbackQuery")[-1]["text"].startswith("No payment yet")
    cryptopay.pay(1001)
    press(bot, check_data)
    assert telegram.called("answerCallbackQuery")[-1]["text"] == "Payment received!"
    Sender(app).run_once()
    assert "active until" in last_message(telegram)["text"]
    command(bot, "/status")
    assert last_message(telegram)["text"].startswith("Your membership is active until 14 February 2027")


def test_crypto_pay_down_gets_a_clear_answer(bot, telegram, cryptopay):
    cryptopay.fail("createInvoice", (502, b"bad gateway"))
    press(bot, "plan:month")
    assert len(telegram.called("answerCallbackQuery")) == 1  # answered at once
    [message] = telegram.messages_to(501)
    assert message["text"].startswith("Payments are unavailable")


def test_status_without_membership(bot, telegram):
    command(bot, "/status")
    assert last_message(telegram)["text"].startswith("You have no active membership")


def test_help_and_unknown_commands(bot, telegram):
    command(bot, "/help")
    assert "/status" in last_message(telegram)["text"]
    command(bot, "/stats")  # an admin command does not exist for others
    assert last_message(telegram)["text"].startswith("I don't know that command")


def test_a_free_trial_starts_once(bot, telegram, app):
    press(bot, "plan:trial")
    Sender(app).run_once()
    assert "active until" in last_message(telegram)["text"]
    press(bot, "plan:trial")
    assert last_message(telegram)["text"].startswith("The free trial can be taken once")


def test_start_for_an_active_member_shows_the_status_renewal_and_the_way_in(bot, telegram, app):
    press(bot, "plan:trial")
    Sender(app).run_once()
    command(bot, "/start")
    message = last_message(telegram)
    assert message["text"].startswith("Welcome back")
    assert [b["callback_data"] for b in buttons(message)] == ["plan:month", "plan:year", "gifts"]
    Sender(app).run_once()
    way_in = last_message(telegram)
    assert buttons(way_in)[0]["url"].startswith("https://t.me/+fake")


def test_a_join_request_without_membership_gets_the_plans_and_is_approved_on_payment(bot, telegram, app,
                                                                                      cryptopay):
    ask_to_join(bot)
    Sender(app).run_once()
    offer = last_message(telegram)
    assert "To join" in offer["text"] and buttons(offer)[0]["callback_data"] == "plan:month"
    assert telegram.called("approveChatJoinRequest") == []
    press(bot, "plan:month")
    cryptopay.pay(1001)
    press(bot, buttons(last_message(telegram))[1]["callback_data"])
    Sender(app).run_once()
    [approval] = telegram.called("approveChatJoinRequest")
    assert int(approval["user_id"]) == 501


def test_a_join_request_from_an_active_member_is_approved(bot, telegram, app):
    press(bot, "plan:trial")
    Sender(app).run_once()
    ask_to_join(bot)
    Sender(app).run_once()
    assert len(telegram.called("approveChatJoinRequest")) == 1


def test_a_join_request_to_another_chat_is_left_alone(bot, telegram, app):
    ask_to_join(bot, chat_id=-100999)
    Sender(app).run_once()
    assert telegram.calls == [] or all(name != "approveChatJoinRequest" for name, _ in telegram.calls)
    assert app.db.waiting_join_chats(501) == []


def test_plain_text_gets_the_menu_in_the_members_language(bot, telegram, app):
    command(bot, "hello?")
    message = last_message(telegram)
    assert message["text"].startswith("Welcome to @club_test_bot")
    assert [b["callback_data"] for b in buttons(message)] == ["plan:month", "plan:year", "plan:trial", "gifts"]
    command(bot, "привет", lang="ru")
    assert last_message(telegram)["text"].startswith("Добро пожаловать")


def test_plain_text_from_an_admin_or_a_member_with_time_gets_the_menu_too(bot, telegram, app):
    command(bot, "hi", user_id=ADMIN)
    assert last_message(telegram, ADMIN)["text"].startswith("Welcome to")
    press(bot, "plan:trial")
    Sender(app).run_once()
    sent = len(telegram.messages_to(501))
    command(bot, "how do I get in?")
    message = last_message(telegram)
    assert message["text"].startswith("Welcome back") and "(3 days left)" in message["text"]
    assert Sender(app).run_once() == 0  # the menu, not the way in again (that is /start's and /link's)
    assert len(telegram.messages_to(501)) == sent + 1


def test_the_activation_and_status_a_second_later_count_the_same_days(bot, telegram, app, cryptopay, clock):
    press(bot, "plan:month")
    cryptopay.pay(1001)
    press(bot, buttons(last_message(telegram))[1]["callback_data"])
    Sender(app).run_once()
    assert "(30 days left)" in last_message(telegram)["text"]
    clock.advance(1)
    command(bot, "/status")
    assert last_message(telegram)["text"].endswith("(30 days left).")
