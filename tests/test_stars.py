"""Telegram Stars: a plan priced in XTR is sold with an invoice link (a 30-day one renews every
month), the pre-checkout query is answered, each payment (first and renewals) is applied once by
its charge id, payments missed while the bot was down are caught up from getStarTransactions,
and the member cancels or resumes the renewal from /status."""
import json

import pytest
from builders import (
    audit_rows,
    buttons,
    command,
    feed,
    last_text,
    paid,
    press,
    stars_invoice,
    stars_paid,
)
from fakes import pre_checkout_query, successful_payment_message

import admin
import stars
import texts
from config import ConfigError
from db import Outcome, StarPayment
from handlers import register_handlers
from outbox import Sender
from workers import Sweeper

DAY = 86400
MONTH = 30 * DAY
PLANS = "month:30d:5:USDT,stars:30d:250:XTR,week:7d:50:XTR:Week pass"


@pytest.fixture
def app(make_app):
    return make_app(PLANS=PLANS)



def paid_rows(app, user_id=501) -> list:
    return [r for r in app.db.member_invoices(user_id) if r["status"] == "paid"]


# --- selling ---

def test_stars_and_crypto_plans_stand_side_by_side_and_a_monthly_one_is_a_subscription(bot, app, telegram, cryptopay):
    command(bot, "/start")
    labels = [b["text"] for b in buttons(telegram.messages_to(501)[-1])]
    assert labels[:3] == ["30 days: 5 USDT", "30 days: 250 ⭐", "Week pass: 50 ⭐"]
    press(bot, "plan:stars")
    [link] = telegram.called("createInvoiceLink")
    assert link["currency"] == "XTR" and json.loads(link["prices"])[0]["amount"] == 250
    assert int(link["subscription_period"]) == MONTH and link["payload"] == stars_invoice(app)["payment_uuid"]
    message = telegram.messages_to(501)[-1]
    assert "renews by itself every 30 days" in message["text"]
    [button] = buttons(message)
    assert button["text"] == "Pay 250 ⭐" and button["url"] == stars_invoice(app)["pay_url"]
    press(bot, "plan:week")
    assert "subscription_period" not in telegram.called("createInvoiceLink")[-1]  # a single payment
    assert cryptopay.called("createInvoice") == []
    press(bot, "plan:stars")  # asked again: the same link
    assert len(telegram.called("createInvoiceLink")) == 2


def test_a_price_in_stars_is_a_whole_number_within_telegrams_limits(make_config):
    for bad in ("m:30d:2.5:XTR", "m:30d:10001:XTR", "m:30d:-1:XTR"):
        with pytest.raises(ConfigError):
            make_config(PLANS=bad)
    assert make_config(PLANS="m:30d:1:XTR").plans[0].renews


def test_when_telegram_makes_no_link_the_member_is_told_and_nothing_is_left_pending(bot, app, telegram):
    telegram.fail("createInvoiceLink", (500, {"ok": False, "error_code": 500, "description": "Internal"}))
    press(bot, "plan:stars")
    assert last_text(telegram).startswith("Payments are unavailable right now")
    assert [r["status"] for r in app.db.member_invoices(501)] == ["failed"]


# --- pre-checkout ---

@pytest.mark.parametrize("case", ["ok", "someone_else", "paid", "price_changed", "plan_gone", "unknown", "amount"])
def test_pre_checkout_takes_only_the_members_own_unpaid_invoice_at_todays_price(make_app, telegram, case):
    app = make_app(PLANS=PLANS)
    register_handlers(app.bot, app)
    press(app.bot, "plan:stars")
    row = stars_invoice(app)
    user, payload, amount = 501, row["payment_uuid"], 250
    if case == "someone_else":
        user = 502
    elif case == "paid":
        stars.apply(app, StarPayment(501, payload, "charge-1", 250, renews_at=app.now() + MONTH), "telegram")
    elif case == "price_changed":
        app = make_app(PLANS="stars:30d:300:XTR")  # the owner changed the price and restarted
        register_handlers(app.bot, app)
    elif case == "plan_gone":
        app = make_app(PLANS="month:30d:5:USDT")
        register_handlers(app.bot, app)
    elif case == "unknown":
        payload = "not-ours"
    elif case == "amount":
        amount = 1
    feed(app.bot, {"pre_checkout_query": pre_checkout_query(user, payload, amount)})
    answer = telegram.pre_checkout_answers[-1]
    assert (answer["ok"] in (True, "true", "True")) == (case == "ok")
    if case != "ok":
        assert answer["error_message"]  # a reason the member reads


# --- payments ---

def test_a_payment_gives_the_time_and_the_way_in_once_however_often_it_arrives(bot, app, telegram):
    payment = stars_paid(bot, telegram, app)
    assert app.db.expires_at(501) == app.now() + MONTH
    message = {"message": successful_payment_message(501, payment)}
    feed(bot, message, message)  # Telegram delivers it again
    charge = payment["telegram_payment_charge_id"]
    paid = StarPayment(501, payment["invoice_payload"], charge, 250, renews_at=app.now() + MONTH)
    assert stars.apply(app, paid, "reconcile").outcome is Outcome.DUPLICATE
    assert app.db.expires_at(501) == app.now() + MONTH and len(paid_rows(app)) == 1
    assert paid_rows(app)[0]["charge_id"] == charge
    Sender(app).run_once()
    assert [m for m in telegram.messages_to(501) if m["text"].startswith("Payment received")]
    [record] = [r for r in audit_rows(app.db, 501) if r["action"] == "payment_applied"]
    assert record["cause"] == "telegram" and charge in record["detail"]


def test_monthly_renewals_extend_from_the_current_expiry_and_record_the_next_date(bot, app, telegram, clock):
    first = stars_paid(bot, telegram, app)
    until = app.db.expires_at(501)
    clock.advance(MONTH - DAY)  # Telegram renews a little before, say
    renewal = telegram.renew(first["telegram_payment_charge_id"])
    feed(bot, {"message": successful_payment_message(501, renewal)})
    assert app.db.expires_at(501) == until + MONTH
    rows = paid_rows(app)
    assert len(rows) == 2 and rows[0]["renewal_of"] == rows[1]["id"]  # newest first
    assert app.db.star_subscription(501)["renews_at"] == renewal["subscription_expiration_date"]
    assert app.db.star_subscription(501)["charge_id"] == first["telegram_payment_charge_id"]


def test_a_renewal_missed_while_the_bot_was_down_is_caught_up_from_star_transactions(bot, app, telegram, clock):
    first = stars_paid(bot, telegram, app)
    until = app.db.expires_at(501)
    clock.advance(MONTH)
    telegram.renew(first["telegram_payment_charge_id"])  # its update was lost: the bot was down 2 days
    clock.advance(2 * DAY)
    Sweeper(app).sweep_once()  # at start, missed payments are looked for
    assert app.db.expires_at(501) == until + MONTH
    assert [r["applied_by"] for r in paid_rows(app)] == ["reconcile", "telegram"]
    Sweeper(app).sweep_once()  # and again later: nothing twice
    assert app.db.expires_at(501) == until + MONTH and len(paid_rows(app)) == 2


def test_a_first_payment_never_seen_is_caught_up_too_and_a_kill_between_applies_nothing_twice(app, telegram):
    app.db.upsert_member(501, "m501", "M", "en", app.now())
    purchase = stars.buy(app, 501, app.config.plan("stars"), "30 days")
    telegram.star_payment(501, purchase.invoice["payment_uuid"], 250, subscription_period=MONTH)
    telegram.star_payment(777, "someone-elses-payload", 5)  # not ours
    assert stars.reconcile(app) == 1
    app.db.put_state(stars.OFFSET_STATE, "0")  # killed before the offset was written: all looked at again
    assert stars.reconcile(app) == 0
    assert app.db.expires_at(501) == app.now() + MONTH and app.db.star_subscription(501) is not None


def test_while_a_renewal_runs_no_second_subscription_is_sold_nor_reminders_sent(bot, app, telegram, clock):
    stars_paid(bot, telegram, app)
    press(bot, "plan:stars")
    assert last_text(telegram).startswith("Your membership already renews by itself")
    assert len(telegram.called("createInvoiceLink")) == 1
    clock.advance(MONTH - 2 * DAY)
    Sweeper(app).sweep_once()
    Sender(app).run_once()
    assert not [m for m in telegram.messages_to(501) if m["text"].startswith("Your membership ends on")]


def test_a_member_cancels_the_renewal_keeps_the_time_gets_reminders_and_is_removed_after(bot, app, telegram, clock):
    first = stars_paid(bot, telegram, app)
    charge = first["telegram_payment_charge_id"]
    command(bot, "/status")
    status = telegram.messages_to(501)[-1]
    assert "It renews automatically on" in status["text"]
    assert [b["callback_data"] for b in buttons(status)] == ["renewal:cancel"]
    press(bot, "renewal:cancel")
    [edit] = telegram.called("editUserStarSubscription")
    assert edit["telegram_payment_charge_id"] == charge and edit["is_canceled"] in (True, "true", "True")
    assert telegram.star_subscriptions[charge]["canceled"]
    command(bot, "/status")
    assert [b["callback_data"] for b in buttons(telegram.messages_to(501)[-1])] == ["renewal:resume"]
    until = app.db.expires_at(501)
    assert telegram.renew(charge) is None  # Telegram charges no more
    clock.advance(MONTH - 2 * DAY)
    Sweeper(app).sweep_once()
    Sender(app).run_once()
    assert [m for m in telegram.messages_to(501) if m["text"].startswith("Your membership ends on")]
    clock.advance(3 * DAY)
    Sweeper(app).sweep_once()
    assert app.db.expires_at(501) == until
    assert app.db.connect().execute("SELECT count(*) FROM outbox WHERE kind = 'expire'").fetchone()[0] == 1


def test_resume_renews_again_and_telegram_refusing_the_change_changes_nothing(bot, app, telegram):
    first = stars_paid(bot, telegram, app)
    charge = first["telegram_payment_charge_id"]
    telegram.fail("editUserStarSubscription", (400, {"ok": False, "error_code": 400, "description": "Bad Request"}))
    press(bot, "renewal:cancel")
    assert app.db.star_subscription(501)["canceled_at"] is None
    press(bot, "renewal:cancel")
    press(bot, "renewal:cancel")  # pressed again: nothing more to do
    press(bot, "renewal:resume")
    assert app.db.star_subscription(501)["canceled_at"] is None
    assert not telegram.star_subscriptions[charge]["canceled"]
    assert [r["action"] for r in audit_rows(app.db, 501)].count("renewal_canceled") == 1
    press(bot, "renewal:cancel", user_id=502)  # someone with no subscription
    assert telegram.called("answerCallbackQuery")[-1]["text"] == "You have no subscription that renews."


def test_an_automatic_renewal_that_comes_late_keeps_the_member_in_for_a_day(bot, app, telegram, clock):
    first = stars_paid(bot, telegram, app)
    clock.advance(MONTH + 3600)  # the time is up, the renewal has not come yet
    Sweeper(app).sweep_once()
    assert app.db.connect().execute("SELECT count(*) FROM outbox WHERE kind = 'expire'").fetchone()[0] == 0
    feed(bot, {"message": successful_payment_message(501, telegram.renew(first["telegram_payment_charge_id"]))})
    assert app.db.expires_at(501) > app.now()
    clock.advance(2 * MONTH)  # and a renewal that never comes (no Stars left): removed a day after
    Sweeper(app).sweep_once()
    assert app.db.connect().execute("SELECT count(*) FROM outbox WHERE kind = 'expire'").fetchone()[0] == 1


def test_a_payment_for_an_unknown_invoice_gives_nothing(bot, app, telegram):
    payment = telegram.star_payment(501, "forged-payload", 250)
    feed(bot, {"message": successful_payment_message(501, payment)})
    assert app.db.expires_at(501) is None


def test_stars_revenue_is_kept_apart_in_stats_and_export(bot, app, telegram, cryptopay):
    stars_paid(bot, telegram, app)
    paid(app, cryptopay, user_id=502)
    stats = admin.stats_text(app.db, app.now(), "en")
    assert "Revenue, 30 days: 5 USDT, 250 ⭐" in stats or "Revenue, 30 days: 250 ⭐, 5 USDT" in stats
    import csv
    import io
    buffer = io.StringIO()
    admin.write_csv(app.db, buffer)
    rows = {r["user_id"]: r for r in csv.DictReader(io.StringIO(buffer.getvalue())) if r["invoice_status"] == "paid"}
    assert rows["501"]["currency"] == "XTR" and rows["501"]["charge_id"].startswith("stx")
    assert rows["502"]["currency"] == "USDT" and rows["502"]["charge_id"] == ""


def test_a_referred_members_first_stars_payment_earns_the_bonus_a_renewal_does_not(make_app, telegram, clock):
    app = make_app(PLANS=PLANS, REFERRAL_BONUS="7d")
    register_handlers(app.bot, app)
    command(app.bot, "/status", user_id=601)
    ref = app.db.member(601)["ref"]
    command(app.bot, f"/start r-{ref}")
    first = stars_paid(app.bot, telegram, app)
    feed(app.bot, {"message": successful_payment_message(501, telegram.renew(first["telegram_payment_charge_id"]))})
    assert app.db.expires_at(601) == app.now() + 7 * DAY


def test_a_payment_flood_never_drops_a_payment():
    from updates import droppable

    message = successful_payment_message(501, {"currency": "XTR", "total_amount": 1, "invoice_payload": "x",
                                               "telegram_payment_charge_id": "c", "provider_payment_charge_id": ""})
    assert not droppable({"message": message}, frozenset())
    assert not droppable({"pre_checkout_query": pre_checkout_query(501, "x", 1)}, frozenset())


def test_paysupport_answers_the_member_and_tells_the_admins_once_a_minute(bot, app, telegram):
    from conftest import ADMIN

    payment = stars_paid(bot, telegram, app)
    for _ in range(5):  # a member who floods it
        command(bot, "/paysupport")
    assert last_text(telegram).startswith("The club's admins have been told")
    Sender(app).run_once()
    told = [m["text"] for m in telegram.messages_to(ADMIN) if m["text"].startswith("/paysupport")]
    assert told == [f"/paysupport from @m501 (id 501): payments #{payment['telegram_payment_charge_id']}. "
                    "/user 501 shows them."]


def test_an_unpaid_stars_invoice_expires_and_is_refused_at_pre_checkout_then(bot, app, telegram, clock):
    press(bot, "plan:stars")
    row = stars_invoice(app)
    clock.advance(app.config.invoice_ttl + 1)
    Sweeper(app).sweep_once()
    assert admin.stats_text(app.db, app.now(), "en").count("Pending invoices: 0") == 1
    feed(bot, {"pre_checkout_query": pre_checkout_query(501, row["payment_uuid"], 250)})
    answer = telegram.pre_checkout_answers[-1]
    assert answer["ok"] in (False, "false", "False")
    assert answer["error_message"] == texts.t("ru", "check_expired")  # no language given: the default
    press(bot, "plan:stars")  # a new one
    assert len(telegram.called("createInvoiceLink")) == 2


def test_a_free_plan_written_in_stars_is_a_trial(make_app, telegram):
    app = make_app(PLANS="stars:30d:250:XTR,trial:3d:0:XTR")
    register_handlers(app.bot, app)
    press(app.bot, "plan:trial")
    assert telegram.called("createInvoiceLink") == [] and app.db.expires_at(501) == app.now() + 3 * DAY


def test_pre_checkout_is_answered_at_once_even_while_every_handler_is_busy(bot, app, telegram):
    from conftest import wait_for

    from updates import UpdatePoller

    press(bot, "plan:stars")
    row = stars_invoice(app)
    telegram.push_update({"pre_checkout_query": pre_checkout_query(501, row["payment_uuid"], 250)})
    poller = UpdatePoller(app)  # its handler threads never started: as if all were waiting on Crypto Pay
    poller.fetch_once(long_poll=0)
    wait_for(lambda: telegram.pre_checkout_answers, timeout=5)
    assert telegram.pre_checkout_answers[-1]["ok"] in (True, "true", "True")
    wait_for(lambda: app.db.connect().execute("SELECT status FROM updates").fetchone()[0] == "done", timeout=5)


def test_an_invoice_past_its_time_is_refused_even_before_the_sweep_marks_it(bot, app, telegram, clock):
    press(bot, "plan:stars")
    row = stars_invoice(app)
    clock.advance(app.config.invoice_ttl)
    feed(bot, {"pre_checkout_query": pre_checkout_query(501, row["payment_uuid"], 250)})
    assert telegram.pre_checkout_answers[-1]["ok"] in (False, "false", "False")


def test_a_renewal_charged_before_the_member_cancelled_but_applied_after_leaves_it_cancelled(bot, app, telegram):
    first = stars_paid(bot, telegram, app)
    renewal = telegram.renew(first["telegram_payment_charge_id"])  # charged; its update not handled yet
    press(bot, "renewal:cancel")
    feed(bot, {"message": successful_payment_message(501, renewal)})  # handled now
    assert app.db.star_subscription(501)["canceled_at"] is not None
