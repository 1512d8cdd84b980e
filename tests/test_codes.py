"""Discount codes: made by the owner (command line, /code), applied by members (deep link,
/code), asked for in the invoice, and counted once, with the payment that used them."""
import csv
import io
import json
import threading
from decimal import Decimal

import pytest
from builders import buttons, command, last_text, paid, pending_invoice, press
from conftest import ADMIN, START
from test_admin import run_cli

import admin
import codes
import texts
from cryptopay import parse_invoice
from db import Outcome
from handlers import register_handlers
from payments import buy

DAY = 86400
INVALID = "This code does not work"


def add(app, words: str) -> None:
    codes.add(app.db, app.config, words.split(), app.now(), "test")


def plan_labels(telegram, chat_id=501) -> list[str]:
    """The plans' buttons of the last message (without the one that shows the plans to give)."""
    return [b["text"] for b in buttons(telegram.messages_to(chat_id)[-1]) if b.get("callback_data") != "gifts"]


def uses(app) -> int:
    return app.db.connect().execute("SELECT count(*) FROM code_uses").fetchone()[0]


def asked(cryptopay) -> list[str]:
    return [params["amount"] for params in cryptopay.called("createInvoice")]


# --- the owner makes codes ---

def test_the_owner_adds_lists_and_disables_a_code_from_the_command_line(app, env, tmp_path):
    code, out, err = run_cli(env, tmp_path, "code", "add", "Spring", "--percent", "20", "--uses", "3",
                             "--until", "2030-01-01", "--plans", "month,year")
    assert code == 0, err
    assert out.startswith("Code Spring (-20%) created") and "?start=c-Spring" in out
    code, _, err = run_cli(env, tmp_path, "code", "add", "SPRING", "--off", "1")
    assert code == 1 and err.strip() == "error: A code named SPRING exists already (names are case-insensitive)."
    code, out, _ = run_cli(env, tmp_path, "code", "list")
    assert "Spring -20% plans:month,year uses:0/3 until:2030-01-01 active revenue:0" in out
    assert run_cli(env, tmp_path, "code", "disable", "spring")[0] == 0
    assert "Spring -20% plans:month,year uses:0/3 until:2030-01-01 disabled" in run_cli(env, tmp_path, "code",
                                                                                        "list")[1]
    code, _, err = run_cli(env, tmp_path, "code", "add", "x", "--percent", "100")
    assert code == 1 and err.startswith("error: --percent 100")


@pytest.mark.parametrize("words, refused", [
    ("BAD! --percent 10", "admin_code_bad_name"),
    ("a" * 33 + " --percent 10", "admin_code_bad_name"),
    ("list --percent 10", "admin_code_bad_name"),
    ("X", "admin_usage_code"),
    ("X --percent 10 --off 1", "admin_usage_code"),
    ("X --percent 10 --colour red", "admin_usage_code"),
    ("X --percent", "admin_usage_code"),
    ("X --percent 0", "admin_code_bad_percent"),
    ("X --percent 100", "admin_code_bad_percent"),
    ("X --percent 1.5", "admin_code_bad_percent"),
    ("X --off 0", "admin_code_bad_off"),
    ("X --off -1", "admin_code_bad_off"),
    ("X --off NaN", "admin_code_bad_off"),
    ("X --percent 10 --plans week", "admin_code_bad_plans"),
    ("X --percent 10 --plans trial", "admin_code_bad_plans"),
    ("X --percent 10 --uses 0", "admin_code_bad_uses"),
    ("X --percent 10 --uses 99999999", "admin_code_bad_uses"),
    ("X --percent 10 --until 2020-01-01", "admin_code_bad_until"),
    ("X --percent 10 --until 2030-13-01", "admin_code_bad_until"),
    ("X --off 5", "admin_code_too_low"),  # month costs 5 USDT: nothing left
    ("X --off 4.96", "admin_code_too_low"),  # 0.04 USDT: less than 1% of the price
    ("X --off 30 --plans year", None),  # 20 USDT: the month it would zero is not covered
    ("X --off 4.95", None),  # exactly 1%
    ("X --percent 99 --first-payment-only", None),
])
def test_a_code_is_checked_when_it_is_made(app, words, refused):
    if refused is None:
        add(app, words)
        assert app.db.code("x") is not None
        return
    with pytest.raises(codes.CodeError) as error:
        add(app, words)
    assert error.value.key == refused
    assert app.db.codes() == []


def test_admins_make_list_and_disable_codes_in_telegram(bot, app, telegram):
    command(bot, "/code add SUMMER --percent 10 --plans year --uses 2", user_id=ADMIN)
    assert last_text(telegram, ADMIN) == ("Code SUMMER (-10%) created. Members apply it with /code SUMMER or the "
                                          "link https://t.me/club_test_bot?start=c-SUMMER")
    command(bot, "/code add summer --percent 5", user_id=ADMIN)
    assert last_text(telegram, ADMIN).startswith("A code named summer exists already")
    command(bot, "/codes", user_id=ADMIN)
    assert "SUMMER -10% plans:year uses:0/2 until:- active" in last_text(telegram, ADMIN)
    command(bot, "/code disable Summer", user_id=ADMIN)
    assert last_text(telegram, ADMIN).startswith("Code Summer disabled")
    command(bot, "/code disable Summer", user_id=ADMIN)
    assert last_text(telegram, ADMIN).startswith("There is no active code named Summer")
    # Not an admin: /code add is a member's /code with too many words; nothing is made.
    command(bot, "/code add WINTER --percent 50", user_id=501)
    assert last_text(telegram, 501) == "To apply a discount code, send /code NAME."
    assert app.db.code("WINTER") is None
    actions = [row["action"] for row in app.db.connect().execute("SELECT action FROM audit ORDER BY id")]
    assert actions.count("code_created") == 1 and actions.count("code_disabled") == 1


# --- prices ---

@pytest.mark.parametrize("amount, currency, fiat, percent, off, expected", [
    ("5", "USDT", False, 33, None, "3.35"),
    ("9.99", "USDC", False, 15, None, "8.49"),  # 8.4915 down
    ("10", "USD", True, 33, None, "6.70"),
    ("1000", "RUB", True, None, "0.005", "999.99"),  # down, never up
    ("3", "TON", False, 33, None, "2.0100"),
    ("0.00012345", "BTC", False, 33, None, "0.00008271"),
    ("0.01", "ETH", False, 33, None, "0.006700"),
    ("1", "XYZ", False, None, "0.3333333", "0.666666"),
])
def test_discounted_prices_are_rounded_down_to_what_the_currency_allows(amount, currency, fiat, percent, off,
                                                                         expected):
    price = codes.discounted(Decimal(amount), currency, fiat, percent, None if off is None else Decimal(off))
    assert str(price) == expected


# --- members apply codes ---

def test_a_deep_link_applies_a_code_shows_both_prices_and_the_invoice_asks_for_the_new_one(bot, app, telegram,
                                                                                          cryptopay):
    add(app, "SPRING --percent 20")
    command(bot, "/start c-spring")
    assert last_text(telegram).startswith("Code applied")
    assert plan_labels(telegram) == ["30 days: 4 USDT instead of 5 USDT", "365 days: 40 USDT instead of 50 USDT",
                                     "3 days: free trial"]
    command(bot, "/start")  # a /start without a code keeps it
    assert plan_labels(telegram)[0] == "30 days: 4 USDT instead of 5 USDT"
    press(bot, "plan:month")
    assert asked(cryptopay) == ["4.00"]
    assert "30 days: 4 USDT" in last_text(telegram) and "Discount code SPRING: 5 USDT without it." in last_text(
        telegram)
    assert buttons(telegram.messages_to(501)[-1])[0]["text"] == "Pay 4 USDT"
    [row] = app.db.member_invoices(501)
    assert (row["amount"], row["full_amount"], row["code_id"]) == ("4.00", "5", app.db.code("spring")["id"])
    app.clock.advance(DAY + 1)  # a day later the code is no longer attached
    command(bot, "/start")
    assert plan_labels(telegram)[0] == "30 days: 5 USDT"


def test_a_member_applies_a_code_with_the_code_command(bot, app, telegram, cryptopay):
    add(app, "SPRING --off 1.5 --plans year")
    command(bot, "/code SPRING")
    assert last_text(telegram).startswith("Code applied")
    assert plan_labels(telegram)[:2] == ["30 days: 5 USDT", "365 days: 48.50 USDT instead of 50 USDT"]
    press(bot, "plan:month")  # not covered: the full price, no code
    press(bot, "plan:year")
    assert asked(cryptopay) == ["5", "48.50"]
    month, year = reversed(app.db.member_invoices(501))
    assert (month["code_id"], year["code_id"]) == (None, app.db.code("SPRING")["id"])
    command(bot, "/code")
    assert last_text(telegram) == "To apply a discount code, send /code NAME."


def test_an_admin_applies_a_code_with_one_word_as_a_member_would(bot, app, telegram):
    add(app, "SPRING --percent 20")
    command(bot, "/code spring", user_id=ADMIN)
    assert last_text(telegram, ADMIN).startswith("Code applied")
    assert app.db.member(ADMIN)["code_id"] == app.db.code("spring")["id"]


def test_a_fiat_plan_asks_for_the_discounted_fiat_amount(make_app, telegram, cryptopay):
    app = make_app(PLANS="month:30d:10:USD")
    register_handlers(app.bot, app)
    add(app, "TEN --percent 15")
    command(app.bot, "/start c-TEN")
    assert plan_labels(telegram) == ["30 days: 8.50 USD instead of 10 USD"]
    press(app.bot, "plan:month")
    [params] = cryptopay.called("createInvoice")
    assert (params["amount"], params["currency_type"], params["fiat"]) == ("8.50", "fiat", "USD")


def test_an_invoice_made_with_a_code_is_not_reused_without_it_nor_the_other_way(bot, app, telegram, cryptopay):
    add(app, "SPRING --percent 20")
    press(bot, "plan:month")
    command(bot, "/code SPRING")
    press(bot, "plan:month")
    press(bot, "plan:month")  # the discounted one again
    assert asked(cryptopay) == ["5", "4.00"]
    app.db.attach_code(501, None, None, app.now(), "test")
    press(bot, "plan:month")
    assert asked(cryptopay) == ["5", "4.00"]
    assert buttons(telegram.messages_to(501)[-1])[0]["url"].endswith("IV1001")
    add(app, "AUTUMN --off 1")  # the same price as SPRING's, another code: the use must go to it
    command(bot, "/code AUTUMN")
    press(bot, "plan:month")
    assert asked(cryptopay) == ["5", "4.00", "4.00"]
    assert app.db.member_invoices(501)[0]["code_id"] == app.db.code("AUTUMN")["id"]


@pytest.mark.parametrize("case", ["unknown", "used_up", "expired", "disabled", "first_payment", "malformed"])
def test_every_code_that_does_not_work_gets_the_same_answer(bot, app, telegram, cryptopay, case):
    if case == "used_up":
        invoice = code_with_invoice(app, "CODE --percent 10 --uses 1", user_id=601)
        app.db.apply_invoice(parse_invoice(cryptopay.pay(invoice["invoice_id"])), "webhook", app.now(),
                             frozenset())
        assert uses(app) == 1
    elif case == "expired":
        add(app, "CODE --percent 10 --until 2027-01-15")
        app.clock.advance(2 * DAY)  # START is 15 January 2027, 08:00 UTC
    elif case == "disabled":
        add(app, "CODE --percent 10")
        codes.disable(app.db, "code", app.now(), "test")
    elif case == "first_payment":
        add(app, "CODE --percent 10 --first-payment-only")
        paid(app, cryptopay, user_id=501)
    name = "CO!DE" if case == "malformed" else "CODE"
    command(bot, f"/code {name}")
    assert last_text(telegram) == texts.t("en", "code_invalid")
    command(bot, f"/start c-{name}")
    assert last_text(telegram).startswith(texts.t("en", "code_invalid") + "\n\nWelcome")
    assert app.db.member(501)["code_id"] is None
    refused = [row for row in app.db.member_audit(501) if row["action"] == "code_refused"]
    assert [row["cause"] for row in refused] == ["link", "command"]  # newest first


def test_a_member_gets_five_wrong_tries_an_hour(bot, app, telegram):
    add(app, "RIGHT --percent 10")
    for name in ("A", "B", "C", "D", "E"):
        command(bot, f"/code {name}")
        assert last_text(telegram).startswith(INVALID)
    command(bot, "/code RIGHT")  # even the right one, now: guessing must not go on
    assert last_text(telegram).startswith("Too many tries")
    command(bot, "/start c-RIGHT")
    assert last_text(telegram).startswith("Too many tries")
    command(bot, "/code RIGHT", user_id=502)  # another member is not held back
    assert last_text(telegram, 502).startswith("Code applied")
    app.clock.advance(3601)
    command(bot, "/code RIGHT")
    assert last_text(telegram).startswith("Code applied")
    command(bot, "/code WRONG")
    assert last_text(telegram).startswith(INVALID)
    assert app.db.connect().execute("SELECT count(*) FROM code_tries").fetchone()[0] == 1  # the old ones forgotten


def test_a_code_that_stopped_working_after_it_was_applied_is_refused_when_a_plan_is_pressed(bot, app, telegram,
                                                                                           cryptopay):
    add(app, "SPRING --percent 20")
    command(bot, "/code SPRING")
    codes.disable(app.db, "SPRING", app.now(), "test")
    press(bot, "plan:month")
    assert last_text(telegram).startswith(INVALID)
    assert plan_labels(telegram)[0] == "30 days: 5 USDT"
    assert cryptopay.called("createInvoice") == []


# --- uses, counted with the payment ---

def code_with_invoice(app, words="SPRING --percent 20", user_id=501, plan="month"):
    if app.db.code(words.split()[0]) is None:
        add(app, words)
    app.db.upsert_member(user_id, f"m{user_id}", "Member", "en", app.now())
    assert codes.apply(app.db, user_id, words.split()[0], app.now(), "command") == "code_applied"
    return pending_invoice(app, user_id, plan)


def test_a_use_counts_once_when_the_payment_is_applied_by_webhook_twice_and_the_poller(app, cryptopay):
    from payments import poll_once

    invoice = code_with_invoice(app)
    assert uses(app) == 0  # an invoice alone is no use
    paid_invoice = parse_invoice(cryptopay.pay(invoice["invoice_id"]))
    outcomes = [app.db.apply_invoice(paid_invoice, "webhook", app.now(), frozenset()).outcome for _ in range(2)]
    poll_once(app)
    assert outcomes == [Outcome.APPLIED, Outcome.DUPLICATE]
    assert uses(app) == 1
    [used] = [row for row in app.db.member_audit(501) if row["action"] == "code_used"]
    assert used["cause"] == "webhook" and json.loads(used["detail"])["full_amount"] == "5 USDT"


def test_a_use_counts_once_when_webhooks_the_poller_and_the_button_race(app, cryptopay, all_read_first):
    invoice = code_with_invoice(app)
    paid_invoice = parse_invoice(cryptopay.pay(invoice["invoice_id"]))
    results = all_read_first([lambda cause=cause: app.db.apply_invoice(paid_invoice, cause, app.now, frozenset())
                              for cause in ("webhook", "poller", "button", "webhook")])
    assert sorted(r.outcome.name for r in results) == ["APPLIED"] + ["DUPLICATE"] * 3
    assert uses(app) == 1
    assert len([r for r in app.db.member_audit(501) if r["action"] == "code_used"]) == 1


def test_a_payment_that_does_not_match_uses_nothing(app, cryptopay):
    invoice = code_with_invoice(app)
    wrong = parse_invoice(cryptopay.pay(invoice["invoice_id"], amount="3"))
    assert app.db.apply_invoice(wrong, "webhook", app.now(), frozenset()).outcome is Outcome.MISMATCH
    assert uses(app) == 0


def test_a_limited_codes_uses_are_held_by_the_invoices_made_with_it(app, cryptopay):
    """Ten members buying at once cannot get more discounted invoices than the code has uses; an
    invoice that expires unpaid gives its use back."""
    add(app, "LAST --percent 20 --uses 2")
    made = []
    for user_id in range(501, 511):
        app.db.upsert_member(user_id, f"m{user_id}", "Member", "en", app.now())
        assert codes.apply(app.db, user_id, "LAST", app.now(), "command") == "code_applied"
        made.append(buy(app, user_id, app.config.plan("month"), "month"))
    assert [p.invoice is not None for p in made] == [True, True] + [False] * 8
    assert all(p.code_refused for p in made[2:])
    for purchase in made[:2]:
        paid_invoice = parse_invoice(cryptopay.pay(purchase.invoice["invoice_id"]))
        assert app.db.apply_invoice(paid_invoice, "webhook", app.now(), frozenset()).outcome is Outcome.APPLIED
    assert uses(app) == 2


def test_an_unpaid_invoice_gives_its_use_back_when_it_expires(app, cryptopay):
    add(app, "ONE --percent 20 --uses 1")
    assert code_with_invoice(app, "ONE", user_id=501) is not None
    app.db.upsert_member(502, "m502", "Member", "en", app.now())
    assert codes.apply(app.db, 502, "ONE", app.now(), "command") == "code_applied"
    assert buy(app, 502, app.config.plan("month"), "month").code_refused  # 501's invoice holds the use
    app.clock.advance(app.config.invoice_ttl + 1)
    assert codes.apply(app.db, 502, "ONE", app.now(), "command") == "code_applied"
    assert buy(app, 502, app.config.plan("month"), "month").invoice is not None


def test_members_racing_for_the_last_use_are_all_honoured_and_every_use_recorded(app, cryptopay):
    add(app, "LAST --percent 20 --uses 3")
    invoices = [code_with_invoice(app, "LAST", user_id=user_id) for user_id in (501, 502, 503)]
    paid_ones = [parse_invoice(cryptopay.pay(i["invoice_id"])) for i in invoices]
    barrier = threading.Barrier(len(paid_ones))
    results = []

    def pay(invoice):
        barrier.wait()
        results.append(app.db.apply_invoice(invoice, "webhook", app.now, frozenset()).outcome)
        app.db.close()

    threads = [threading.Thread(target=pay, args=(invoice,)) for invoice in paid_ones]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [Outcome.APPLIED] * 3
    assert uses(app) == 3 == len([r for r in app.db.connect().execute("SELECT 1 FROM invoices WHERE status = 'paid'")])
    assert all(app.db.expires_at(user_id) == START + 30 * DAY for user_id in (501, 502, 503))
    # The limit was reached: a fourth member cannot apply it any more.
    app.db.upsert_member(504, "m504", "Member", "en", app.now())
    assert codes.apply(app.db, 504, "LAST", app.now(), "command") == "code_invalid"


def test_a_code_expiring_between_invoice_and_payment_still_honours_the_price_shown(app, cryptopay):
    invoice = code_with_invoice(app, "SPRING --percent 20 --until 2027-01-15")
    app.clock.advance(DAY)  # the code is over; the invoice (made before) is not
    paid_invoice = parse_invoice(cryptopay.pay(invoice["invoice_id"]))
    assert paid_invoice.amount == Decimal("4.00")
    assert app.db.apply_invoice(paid_invoice, "poller", app.now(), frozenset()).outcome is Outcome.APPLIED
    assert uses(app) == 1
    assert codes.state(app.db.code("SPRING"), app.now()) == "expired"


def test_a_code_disabled_after_the_invoice_was_made_still_honours_its_payment(app, cryptopay):
    invoice = code_with_invoice(app)
    codes.disable(app.db, "SPRING", app.now(), "test")
    paid_invoice = parse_invoice(cryptopay.pay(invoice["invoice_id"]))
    assert app.db.apply_invoice(paid_invoice, "webhook", app.now(), frozenset()).outcome is Outcome.APPLIED
    assert uses(app) == 1


def test_a_first_payment_only_code_is_for_members_who_never_paid(app, cryptopay):
    code_with_invoice(app, "NEW --percent 50 --first-payment-only", user_id=502)  # never paid: fine
    paid(app, cryptopay, user_id=501)
    assert codes.apply(app.db, 501, "NEW", app.now(), "command") == "code_invalid"


def test_a_first_payment_only_code_discounts_one_invoice_of_a_member_not_two(app, cryptopay):
    assert code_with_invoice(app, "NEW --percent 50 --first-payment-only", user_id=502, plan="month") is not None
    second = buy(app, 502, app.config.plan("year"), "year")
    assert second.code_refused and second.invoice is None


def test_a_plan_cheapened_after_the_code_was_made_is_not_taken_below_the_floor(app, make_app):
    add(app, "BIG --off 4")  # month costs 5 USDT: 1 USDT after the code, above the floor
    cheaper = make_app(PLANS="month:30d:3:USDT,year:365d:50:USDT")
    month = cheaper.config.plan("month")
    assert not codes.covers(cheaper.db.code("BIG"), month)  # 3 - 4 would be below zero
    cheaper.db.upsert_member(501, "m501", "Member", "en", cheaper.now())
    assert codes.apply(cheaper.db, 501, "BIG", cheaper.now(), "command") == "code_applied"
    purchase = buy(cheaper, 501, month, "month")
    assert purchase.invoice is not None and purchase.invoice["amount"] == "3" and purchase.invoice["code_id"] is None


def test_stats_and_export_show_each_code(app, cryptopay, bot, telegram):
    invoice = code_with_invoice(app)
    app.db.apply_invoice(parse_invoice(cryptopay.pay(invoice["invoice_id"])), "webhook", app.now(), frozenset())
    paid(app, cryptopay, user_id=502)
    text = admin.stats_text(app.db, app.now(), "en")
    assert "Revenue, 30 days: 9 USDT" in text
    assert "SPRING -20% plans:all uses:1/∞ until:- active revenue:4 USDT" in text
    command(bot, "/stats", user_id=ADMIN)
    assert "SPRING -20%" in last_text(telegram, ADMIN)
    buffer = io.StringIO()
    admin.write_csv(app.db, buffer)
    rows = {row["user_id"]: row for row in csv.DictReader(io.StringIO(buffer.getvalue()))}
    assert (rows["501"]["code"], rows["501"]["amount"], rows["501"]["full_amount"]) == ("SPRING", "4.00", "5")
    assert (rows["502"]["code"], rows["502"]["full_amount"]) == ("", "")
    assert buffer.getvalue().encode().startswith(admin.export_header())


RACER = """
import json, os, sys, time
sys.path.insert(0, {root!r})
from cryptopay import parse_invoice
from db import Database
database = Database({path!r})
invoices = [parse_invoice(body) for body in json.loads(sys.argv[1])]
while not os.path.exists({go!r}):
    time.sleep(0.002)
print(" ".join(database.apply_invoice(i, "webhook", {now}, frozenset()).outcome.name for i in invoices))
"""


def test_two_processes_racing_for_the_last_use_honour_every_payment_once(app, cryptopay, tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    add(app, "LAST --percent 20 --uses 3")  # three invoices hold the three uses
    bodies = {user_id: cryptopay.pay(code_with_invoice(app, "LAST", user_id=user_id)["invoice_id"])
              for user_id in (501, 502, 503)}
    go = tmp_path / "go"
    script = RACER.format(root=str(ROOT), path=str(app.config.database_path), go=str(go), now=app.now())
    racers = [subprocess.Popen([sys.executable, "-c", script, json.dumps([bodies[a], bodies[b]])],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for a, b in ((501, 502), (503, 502))]  # 502's payment comes from both
    go.touch()
    outcomes = []
    for racer in racers:
        out, err = racer.communicate(timeout=30)
        assert racer.returncode == 0, err
        outcomes += out.split()
    assert sorted(outcomes) == ["APPLIED"] * 3 + ["DUPLICATE"]
    assert uses(app) == 3
    assert all(app.db.expires_at(user_id) == START + 30 * DAY for user_id in (501, 502, 503))


def test_pressing_the_plan_again_in_the_last_minutes_of_ones_own_discounted_invoice_keeps_it(app, cryptopay):
    add(app, "ONE --percent 20 --uses 1")
    first = code_with_invoice(app, "ONE", user_id=501)
    app.clock.advance(app.config.invoice_ttl - 60)  # a minute left: too little to reuse, still payable
    again = buy(app, 501, app.config.plan("month"), "month")
    assert not again.code_refused and again.invoice["payment_uuid"] == first["payment_uuid"]
    assert app.db.member(501)["code_id"] is not None  # the code stays with the member
