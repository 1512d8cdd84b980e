"""Gifts members buy: a paid plan bought "as a gift" makes, once paid, a single-use link for the
buyer to pass on (their own time unchanged), which the database keeps only as a hash once the
buyer has it; the buyer hears when it is taken. And the admins' /gift in Telegram."""
import csv
import io
import json
import re

import pytest
import test_codes
from builders import apply, audit_rows, buttons, command, gift_links, last_text, member_with_time, press
from conftest import ADMIN

import admin
import gifts
from cryptopay import parse_invoice
from db import Outcome
from outbox import Sender

DAY = 86400
MONTH = 30 * DAY
LINK = re.compile(r"https://t\.me/club_test_bot\?start=g-([A-Za-z0-9]{43})(?![A-Za-z0-9_-])")
add = test_codes.add


def gift_invoice(app, user_id: int = 501):
    [row] = [row for row in app.db.member_invoices(user_id) if row["gift"] and row["status"] == "pending"]
    return row


def buy_gift(bot, app, cryptopay, user_id: int = 501, plan: str = "month"):
    """The member presses "Give as a gift", then the plan, and pays the invoice: the paid invoice."""
    press(bot, "gifts", user_id=user_id)
    press(bot, f"gift:{plan}", user_id=user_id)
    return parse_invoice(cryptopay.pay(gift_invoice(app, user_id)["invoice_id"]))


def the_link(telegram, user_id: int = 501) -> str:
    found = [LINK.search(m["text"]) for m in telegram.messages_to(user_id)]
    [token] = [match[1] for match in found if match]
    return token


def gift_rows(app) -> list:
    return app.db.connect().execute("SELECT * FROM gifts ORDER BY id").fetchall()


def test_the_menu_offers_the_paid_plans_as_gifts_and_the_invoice_says_it_is_one(bot, app, telegram, cryptopay):
    command(bot, "/start")
    assert buttons(telegram.messages_to(501)[-1])[-1] == {"text": "🎁 Give as a gift", "callback_data": "gifts"}
    press(bot, "gifts")
    menu = telegram.messages_to(501)[-1]
    assert menu["text"].startswith("Choose a plan to give")
    assert [(b["text"], b["callback_data"]) for b in buttons(menu)] == [("30 days: 5 USDT", "gift:month"),
                                                                        ("365 days: 50 USDT", "gift:year")]
    press(bot, "gift:month")
    assert "This is a gift: when it is paid, you get a link to pass on" in last_text(telegram)
    [params] = cryptopay.called("createInvoice")
    assert params["amount"] == "5" and params["description"].endswith("(gift)")
    command(bot, "/gift", user_id=502, lang="ru")
    assert last_text(telegram, 502).startswith("Выберите тариф в подарок")


def test_a_paid_gift_gives_the_buyer_a_link_not_time_and_the_database_keeps_no_usable_link(
        bot, app, telegram, cryptopay):
    until = member_with_time(app, 501)
    result = apply(app, buy_gift(bot, app, cryptopay))
    assert result.outcome is Outcome.APPLIED and result.gift is not None
    assert app.db.expires_at(501) == until  # the buyer's own time is unchanged
    Sender(app).run_once()
    message = [m["text"] for m in telegram.messages_to(501) if m["text"].startswith("Thank you! Your gift is paid")]
    assert len(message) == 1 and "30 days" in message[0] and "I will tell you when it is taken" in message[0]
    token = the_link(telegram)
    [row] = gift_rows(app)
    assert row["token_hash"] == gifts.token_hash(token) and row["short_id"] == result.gift
    assert row["created_by"] == "member:501" and row["duration"] == MONTH
    dump = "\n".join(app.db.connect().iterdump())
    assert token not in dump  # sent: the outbox row no longer carries it either
    actions = [r["action"] for r in audit_rows(app.db, 501)]
    assert "gift_bought" in actions and "payment_applied" not in actions


def test_the_link_gives_the_time_once_and_the_buyer_hears_it_was_taken(bot, app, telegram, cryptopay):
    apply(app, buy_gift(bot, app, cryptopay))
    Sender(app).run_once()
    token = the_link(telegram)
    app.db.upsert_member(502, "bob", "Bob", "en", app.now())
    command(bot, f"/start g-{token}", user_id=502)
    assert last_text(telegram, 502).startswith("Gift accepted: 30 days")
    assert app.db.expires_at(502) == app.now() + MONTH
    command(bot, f"/start g-{token}", user_id=503)
    assert last_text(telegram, 503).startswith("This gift link was already used")
    assert app.db.expires_at(503) is None
    Sender(app).run_once()
    taken = [m["text"] for m in telegram.messages_to(501)][-1]
    assert taken == f"Your gift {gift_rows(app)[0]['short_id']} was taken: its membership has begun."
    assert "Bob" not in taken and "bob" not in taken  # not by whom: a leaked link must not name a stranger
    press(bot, "gifts")
    assert f"{gift_rows(app)[0]['short_id']} (30 days): taken" in last_text(telegram)
    assert "bought by 501" in gifts.list_lines(app.db)[0]


def test_a_gift_applied_by_webhook_poller_and_button_at_once_makes_one_link(bot, app, telegram, cryptopay,
                                                                           all_read_first):
    invoice = buy_gift(bot, app, cryptopay)
    results = all_read_first([lambda cause=cause: apply(app, invoice, cause) for cause in ("webhook", "poller",
                                                                                           "button", "webhook")])
    assert sorted(r.outcome.value for r in results) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert len(gift_rows(app)) == 1
    assert app.db.connect().execute("SELECT count(*) FROM outbox WHERE kind = 'gift_bought'").fetchone()[0] == 1
    apply(app, invoice)  # and again later
    assert len(gift_rows(app)) == 1


def test_a_gift_invoice_is_never_reused_for_oneself_nor_the_other_way_round(bot, app, telegram, cryptopay):
    press(bot, "gift:month")
    press(bot, "plan:month")
    press(bot, "gift:month")
    press(bot, "plan:month")
    assert len(cryptopay.called("createInvoice")) == 2
    gift, own = gift_invoice(app), [r for r in app.db.member_invoices(501) if not r["gift"]][0]
    assert gift["invoice_id"] != own["invoice_id"]
    apply(app, parse_invoice(cryptopay.pay(own["invoice_id"])))
    assert app.db.expires_at(501) == app.now() + MONTH and gift_rows(app) == []


def test_a_free_plan_cannot_be_bought_as_a_gift(bot, app, telegram, cryptopay):
    press(bot, "gift:trial")
    press(bot, "gift:nonsense")
    assert cryptopay.called("createInvoice") == [] and app.db.expires_at(501) is None
    assert [c["text"] for c in telegram.called("answerCallbackQuery")][-2:] == [
        "This plan is no longer offered. Send /start to see the current plans."] * 2


def test_a_discount_code_applies_to_a_gift_and_its_use_counts_once(bot, app, telegram, cryptopay):
    add(app, "GIVE --percent 20 --uses 1")
    command(bot, "/code GIVE")
    press(bot, "gift:month")
    [params] = cryptopay.called("createInvoice")
    assert params["amount"] == "4.00"
    apply(app, parse_invoice(cryptopay.pay(gift_invoice(app)["invoice_id"])))
    assert app.db.code("GIVE")["uses"] == 1 and len(gift_rows(app)) == 1


def test_a_first_payment_only_code_does_not_discount_a_gift(bot, app, telegram, cryptopay):
    add(app, "NEWBIE --percent 50 --first-payment-only")
    command(bot, "/code NEWBIE")
    press(bot, "gifts")
    assert [b["text"] for b in buttons(telegram.messages_to(501)[-1])][0] == "30 days: 5 USDT"
    press(bot, "gift:month")
    press(bot, "plan:month")  # for oneself, it still works
    assert [params["amount"] for params in cryptopay.called("createInvoice")] == ["5", "2.50"]


def test_a_mismatched_gift_payment_makes_no_link(bot, app, telegram, cryptopay):
    press(bot, "gift:month")
    invoice = parse_invoice(cryptopay.pay(gift_invoice(app)["invoice_id"], amount="1"))
    assert apply(app, invoice).outcome is Outcome.MISMATCH
    assert gift_rows(app) == []


def test_the_export_names_the_link_a_payment_bought(bot, app, telegram, cryptopay):
    short_id = apply(app, buy_gift(bot, app, cryptopay)).gift
    buffer = io.StringIO()
    admin.write_csv(app.db, buffer)
    [row] = [r for r in csv.DictReader(io.StringIO(buffer.getvalue())) if r["invoice_status"] == "paid"]
    assert row["gift_link"] == short_id
    assert "Gift links: 1 made (1 bought by members), 0 redeemed" in admin.stats_text(app.db, app.now(), "en")


# --- the admins' /gift ---

def sent_links(telegram) -> list[str]:
    [document] = telegram.called("sendDocument")
    raw = document["_raw"].decode()
    return re.findall(r"start=g-([A-Za-z0-9]{43})", raw)


def test_an_admin_makes_links_in_telegram_as_a_file_and_they_work(bot, app, telegram):
    command(bot, "/gift create month 3", user_id=ADMIN)
    tokens = sent_links(telegram)
    assert len(tokens) == 3 and len(gift_rows(app)) == 3
    assert {r["token_hash"] for r in gift_rows(app)} == {gifts.token_hash(t) for t in tokens}
    assert gift_rows(app)[0]["created_by"] == f"telegram:{ADMIN}"
    command(bot, f"/start g-{tokens[0]}", user_id=502)
    assert app.db.expires_at(502) == app.now() + MONTH
    command(bot, "/gift list", user_id=ADMIN)
    text = last_text(telegram, ADMIN)
    assert text.startswith("Gift links (id, plan, made, redeemed):") and text.count("plan:month") == 3
    assert "redeemed by 502 @m502" in text


@pytest.mark.parametrize("words", ["create", "create month", "create month many", "create nonsense 3",
                                   "create month 0", "create month 10001", "create month -1", "create month 3 4",
                                   "create month ²", "create month ３", "list x", "make month 3"])
def test_a_wrong_gift_create_says_how_and_makes_nothing(bot, app, telegram, words):
    command(bot, f"/gift {words}", user_id=ADMIN)
    assert last_text(telegram, ADMIN).startswith("Usage: /gift create PLAN COUNT")
    assert telegram.called("sendDocument") == [] and gift_rows(app) == []


def test_links_whose_file_was_not_sent_do_not_work(bot, app, telegram):
    telegram.fail("sendDocument", (400, {"ok": False, "error_code": 400, "description": "Bad Request: boom"}))
    command(bot, "/gift create month 2", user_id=ADMIN)
    assert last_text(telegram, ADMIN).startswith("The file could not be sent, so no links were made")
    assert gift_rows(app) == []


def test_a_batch_whose_file_was_sent_right_before_a_kill_works_when_the_command_comes_again(
        bot, app, telegram, monkeypatch):
    from builders import feed, message

    class Killed(BaseException):
        pass

    ready = type(app.db).gift_batch_ready

    def killed_once(self, key):
        monkeypatch.setattr(type(app.db), "gift_batch_ready", ready)
        raise Killed

    monkeypatch.setattr(type(app.db), "gift_batch_ready", killed_once)
    update = message("/gift create month 2", user_id=ADMIN)
    with pytest.raises(Killed):
        feed(bot, update)  # the file went out, then the process died
    tokens = sent_links(telegram)
    command(bot, f"/start g-{tokens[0]}", user_id=502)
    assert app.db.expires_at(502) is None  # not working yet
    feed(bot, update)  # handled again after the restart
    assert len(telegram.called("sendDocument")) == 1 and len(gift_rows(app)) == 2
    command(bot, f"/start g-{tokens[1]}", user_id=503)
    assert app.db.expires_at(503) == app.now() + MONTH


def test_the_gift_list_fits_in_one_message_however_many_links_were_redeemed(app):
    for number, token in enumerate(t for t, _ in gift_links(app, "month", 80)):
        app.db.upsert_member(600 + number, "u" * 32, "Member", "en", app.now())
        gifts.redeem(app.db, 600 + number, token, app.now())
    text = admin.gifts_text(gifts.list_lines(app.db), "en")
    assert len(text) <= 4096 and text.splitlines()[1].startswith("… +")
    assert text.splitlines()[-1] == gifts.list_lines(app.db)[-1]  # the newest


def test_a_gift_create_handled_again_after_a_crash_makes_no_second_batch(bot, app, telegram):
    from builders import feed, message

    update = message("/gift create month 2", user_id=ADMIN)
    feed(bot, update)
    feed(bot, update)  # the same message again: Telegram sends it again after a restart
    assert len(telegram.called("sendDocument")) == 1 and len(gift_rows(app)) == 2
    assert last_text(telegram, ADMIN).startswith("These gift links were made before")


def test_the_buyer_sees_the_gifts_they_bought_in_the_gift_menu(bot, app, telegram, cryptopay):
    apply(app, buy_gift(bot, app, cryptopay))
    apply(app, buy_gift(bot, app, cryptopay, plan="year"))
    command(bot, "/gift")
    text = last_text(telegram)
    short = [r["short_id"] for r in gift_rows(app)]
    assert f"{short[0]} (30 days): not taken yet" in text and f"{short[1]} (365 days): not taken yet" in text
    command(bot, "/gift", user_id=502)
    assert "Gifts you bought" not in last_text(telegram, 502)


def test_a_gift_message_waiting_for_delivery_holds_the_token_until_sent(bot, app, telegram, cryptopay):
    apply(app, buy_gift(bot, app, cryptopay))
    [row] = app.db.connect().execute("SELECT payload FROM outbox WHERE kind = 'gift_bought'").fetchall()
    assert len(json.loads(row["payload"])["token"]) == 43
    Sender(app).run_once()
    [row] = app.db.connect().execute("SELECT payload, status FROM outbox WHERE kind = 'gift_bought'").fetchall()
    assert row["status"] == "sent" and "token" not in json.loads(row["payload"])


def test_a_link_the_buyer_could_not_receive_is_kept_and_sent_again_when_they_ask(bot, app, telegram, cryptopay):
    apply(app, buy_gift(bot, app, cryptopay))
    telegram.fail("sendMessage", (403, {"ok": False, "error_code": 403,
                                        "description": "Forbidden: bot was blocked by the user"}))
    Sender(app).run_once()
    [row] = app.db.connect().execute("SELECT payload, status FROM outbox WHERE kind = 'gift_bought'").fetchall()
    assert row["status"] == "failed" and "token" in json.loads(row["payload"])  # not lost with the failure
    command(bot, "/start")  # the buyer is back
    assert "on their way again" in last_text(telegram)
    Sender(app).run_once()
    token = the_link(telegram)
    assert gift_rows(app)[0]["token_hash"] == gifts.token_hash(token)
    command(bot, "/gift")
    assert "on their way again" not in last_text(telegram)  # once delivered, nothing to send again


def test_a_link_is_not_sent_before_the_bot_knows_its_own_name(bot, app, telegram, cryptopay):
    apply(app, buy_gift(bot, app, cryptopay))
    app.bot_username = app.bot_id = None  # getMe failed at start
    telegram.fail("getMe", (502, {"ok": False, "error_code": 502, "description": "Bad Gateway"}))
    Sender(app).run_once()
    assert not [m for m in telegram.messages_to(501) if "start=g-" in m["text"]]
    app.clock.advance(120)
    Sender(app).run_once()
    assert gift_rows(app)[0]["token_hash"] == gifts.token_hash(the_link(telegram))
