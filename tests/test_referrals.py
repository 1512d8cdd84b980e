"""Referrals: a member's link (t.me/<bot>?start=r-<ref>, shown by /status), who it attributes
(new members only, first link wins, never oneself, no loops), and the bonus the referrer earns
by a referred member's first own payment: once, in the payment's transaction."""
import csv
import io
import re

import pytest
from builders import audit_rows, command, gift_links, last_text, member_with_time, paid, paid_invoice, press
from conftest import ADMIN
from test_admin import run_cli

import admin
from cryptopay import parse_invoice
from db import Outcome
from handlers import register_handlers
from outbox import Sender

DAY = 86400
BONUS = 7 * DAY
MONTH = 30 * DAY
INVALID = "This link does not work"


@pytest.fixture
def app(make_app):
    return make_app(REFERRAL_BONUS="7d")


def link_of(bot, telegram, user_id: int) -> str:
    """The member asks /status and reads their referral code off it."""
    command(bot, "/status", user_id=user_id)
    found = re.search(r"https://t\.me/club_test_bot\?start=r-([A-Za-z0-9]{8})(?![A-Za-z0-9_-])",
                      last_text(telegram, user_id))
    assert found, last_text(telegram, user_id)
    return found[1]


def referred_by(app, user_id: int) -> int | None:
    return app.db.member(user_id)["referred_by"]


def bonuses(app) -> list[tuple]:
    return [tuple(row) for row in app.db.connect().execute(
        "SELECT referred_id, referrer_id, duration FROM referral_bonuses ORDER BY referred_id")]


def arrive(bot, user_id: int, ref: str) -> None:
    command(bot, f"/start r-{ref}", user_id=user_id)


# --- the link ---

def test_status_shows_the_members_own_link_the_same_each_time_and_what_it_earned(bot, app, telegram):
    ref = link_of(bot, telegram, 501)
    assert link_of(bot, telegram, 501) == ref
    assert link_of(bot, telegram, 502) != ref
    text = last_text(telegram, 501)
    assert "For each friend who pays for the first time, you get 7 days free" in text
    assert "Friends who paid so far: 0; time earned: 0." in text
    command(bot, "/status", user_id=503, lang="ru")
    assert "Приглашайте друзей по своей ссылке: https://t.me/club_test_bot?start=r-" in last_text(telegram, 503)


def test_with_referrals_off_there_is_no_link_and_a_link_attributes_no_one(make_app, telegram):
    on = make_app(REFERRAL_BONUS="7d")
    register_handlers(on.bot, on)
    ref = link_of(on.bot, telegram, 501)
    off = make_app()  # the owner empties REFERRAL_BONUS and restarts
    register_handlers(off.bot, off)
    command(off.bot, "/status", user_id=501)
    assert "start=r-" not in last_text(telegram, 501)
    arrive(off.bot, 502, ref)
    assert last_text(telegram, 502).startswith("Welcome to")  # a plain /start, no note
    assert referred_by(off, 502) is None


# --- who is attributed ---

def test_a_new_member_who_arrives_by_a_link_is_attributed_and_the_first_link_wins(bot, app, telegram):
    first, second = link_of(bot, telegram, 501), link_of(bot, telegram, 502)
    arrive(bot, 503, first)
    assert last_text(telegram, 503).startswith("Welcome to")  # no note: the member is simply welcomed
    assert referred_by(app, 503) == 501
    arrive(bot, 503, second)
    assert referred_by(app, 503) == 501
    [record] = [row for row in audit_rows(app.db, 503) if row["action"] == "referred"]
    assert '"referrer": 501' in record["detail"]


def test_ones_own_link_attributes_no_one_and_says_so(bot, app, telegram):
    ref = link_of(bot, telegram, 501)
    arrive(bot, 501, ref)
    assert last_text(telegram, 501).startswith("This is your own invitation link")
    assert referred_by(app, 501) is None


@pytest.mark.parametrize("before", ["paid", "trial", "grant", "gift"])
def test_someone_who_already_had_time_is_not_attributed(bot, app, telegram, cryptopay, before):
    ref = link_of(bot, telegram, 501)
    if before == "paid":
        paid(app, cryptopay, user_id=502)
    elif before == "trial":
        press(bot, "plan:trial", user_id=502)
    elif before == "grant":
        admin.grant(app.db, "502", "1d", app.now(), "test", "en")
    else:
        [(token, _)] = gift_links(app, "month", 1)
        command(bot, f"/start g-{token}", user_id=502)
    app.clock.advance(400 * DAY)  # long gone since: still no new member
    arrive(bot, 502, ref)
    assert referred_by(app, 502) is None
    assert not [row for row in audit_rows(app.db, 502) if row["action"] == "referred"]


def test_a_referral_loop_is_refused_and_each_pays_for_the_other_at_most_once(bot, app, telegram, cryptopay):
    """A refers B; B's link cannot then refer A (nor C's, down a longer chain, refer A)."""
    a_ref = link_of(bot, telegram, 501)
    arrive(bot, 502, a_ref)
    b_ref = link_of(bot, telegram, 502)
    arrive(bot, 501, b_ref)
    assert referred_by(app, 501) is None
    arrive(bot, 503, b_ref)  # A -> B -> C
    arrive(bot, 501, link_of(bot, telegram, 503))
    assert referred_by(app, 501) is None and [referred_by(app, u) for u in (502, 503)] == [501, 502]
    for user in (501, 502, 503):
        paid(app, cryptopay, user_id=user)
    assert bonuses(app) == [(502, 501, BONUS), (503, 502, BONUS)]  # A, who was referred by no one, earns for B


@pytest.mark.parametrize("parameter", ["r-short", "r-" + "A" * 9, "r-AAAA!AAA", "r-AAAAAAAA", "r-" + "A" * 70,
                                       "r-"])
def test_a_broken_or_unknown_link_is_refused_politely_and_attributes_no_one(bot, app, telegram, parameter):
    link_of(bot, telegram, 501)
    command(bot, f"/start {parameter}", user_id=502)
    assert last_text(telegram, 502).startswith(INVALID + ": check that it was copied whole.\n\nWelcome to")
    assert referred_by(app, 502) is None


def test_a_parameter_of_the_owners_own_is_a_plain_start(bot, app, telegram):
    command(bot, "/start instagram_ad", user_id=502)
    assert last_text(telegram, 502).startswith("Welcome to")
    command(bot, "/start bad%20tag", user_id=502)  # not a parameter Telegram could carry
    assert last_text(telegram, 502).startswith(INVALID)


# --- the bonus ---

def test_the_first_payment_of_a_referred_member_gives_the_referrer_the_bonus_with_a_message(
        bot, app, telegram, cryptopay):
    until = member_with_time(app, 501)
    arrive(bot, 502, link_of(bot, telegram, 501))
    result = paid(app, cryptopay, user_id=502)
    assert result.outcome is Outcome.APPLIED
    assert app.db.expires_at(501) == until + BONUS
    assert bonuses(app) == [(502, 501, BONUS)]
    [record] = [row for row in audit_rows(app.db, 501) if row["action"] == "referral_bonus"]
    assert record["cause"] == "webhook" and '"referred": 502' in record["detail"]
    Sender(app).run_once()
    told = [m["text"] for m in telegram.messages_to(501) if m["text"].startswith("A friend you invited has paid")]
    assert len(told) == 1 and "7 days is yours" in told[0]
    link_of(bot, telegram, 501)
    assert "Friends who paid so far: 1; time earned: 7 days." in last_text(telegram)


def test_a_referrer_without_time_gets_the_bonus_from_now_and_the_way_in(bot, app, telegram, cryptopay):
    arrive(bot, 502, link_of(bot, telegram, 501))
    paid(app, cryptopay, user_id=502)
    assert app.db.expires_at(501) == app.now() + BONUS
    Sender(app).run_once()
    message = [m for m in telegram.messages_to(501) if m["text"].startswith("A friend you invited")][-1]
    assert "Open the link and send a join request" in message["text"] and message.get("reply_markup")


def test_a_referred_member_who_pays_twice_earns_the_referrer_one_bonus(bot, app, telegram, cryptopay):
    until = member_with_time(app, 501)
    arrive(bot, 502, link_of(bot, telegram, 501))
    paid(app, cryptopay, user_id=502)
    paid(app, cryptopay, user_id=502, plan="year")
    assert app.db.expires_at(501) == until + BONUS and len(bonuses(app)) == 1


def test_two_payments_of_a_referred_member_applied_at_once_earn_one_bonus(bot, app, telegram, cryptopay,
                                                                          all_read_first):
    until = member_with_time(app, 501)
    arrive(bot, 502, link_of(bot, telegram, 501))
    first = parse_invoice(paid_invoice(app, cryptopay, user_id=502))
    second = parse_invoice(paid_invoice(app, cryptopay, user_id=502, plan="year"))
    calls = [lambda invoice=invoice, cause=cause: app.db.apply_invoice(invoice, cause, app.now(), frozenset(), BONUS)
             for invoice in (first, second) for cause in ("webhook", "poller")]
    results = all_read_first(calls)
    assert sorted(r.outcome.value for r in results) == ["applied", "applied", "duplicate", "duplicate"]
    assert app.db.expires_at(501) == until + BONUS and len(bonuses(app)) == 1


def test_gifts_and_trials_do_not_earn_and_do_not_count_as_the_first_payment(bot, app, telegram, cryptopay):
    until = member_with_time(app, 501)
    arrive(bot, 502, link_of(bot, telegram, 501))
    press(bot, "plan:trial", user_id=502)  # a free trial: no bonus
    press(bot, "gift:month", user_id=502)  # a gift bought and paid: no bonus
    [invoice] = [row for row in app.db.member_invoices(502) if row["gift"]]
    app.db.apply_invoice(parse_invoice(cryptopay.pay(invoice["invoice_id"])), "webhook", app.now(), frozenset(), BONUS)
    [(token, _)] = gift_links(app, "month", 1)
    command(bot, f"/start g-{token}", user_id=502)  # a gift link redeemed: no bonus
    assert bonuses(app) == [] and app.db.expires_at(501) == until
    paid(app, cryptopay, user_id=502)  # their first own payment
    assert bonuses(app) == [(502, 501, BONUS)] and app.db.expires_at(501) == until + BONUS


def test_a_payment_made_while_referrals_were_off_was_the_first_one(make_app, telegram, cryptopay):
    on = make_app(REFERRAL_BONUS="7d")
    register_handlers(on.bot, on)
    arrive(on.bot, 502, link_of(on.bot, telegram, 501))
    off = make_app()
    paid(off, cryptopay, user_id=502)
    paid(on, cryptopay, user_id=502)  # on again: this one is not the first payment
    assert bonuses(on) == [] and on.db.expires_at(501) is None


def test_the_bonus_is_never_more_than_the_time_the_payment_bought(make_app, telegram, cryptopay):
    app = make_app(REFERRAL_BONUS="60d", PLANS="week:7d:1:USDT,year:365d:50:USDT")
    register_handlers(app.bot, app)
    arrive(app.bot, 502, link_of(app.bot, telegram, 501))
    arrive(app.bot, 503, link_of(app.bot, telegram, 501))
    paid(app, cryptopay, user_id=502, plan="week")
    paid(app, cryptopay, user_id=503, plan="year")
    assert bonuses(app) == [(502, 501, 7 * DAY), (503, 501, 60 * DAY)]


def test_a_referrer_whose_time_an_admin_revoked_earns_nothing(bot, app, telegram, cryptopay):
    member_with_time(app, 501)
    arrive(bot, 502, link_of(bot, telegram, 501))
    app.db.revoke(501, app.now(), "test")
    paid(app, cryptopay, user_id=502)
    paid(app, cryptopay, user_id=502, plan="year")
    assert app.db.expires_at(501) == 0 and bonuses(app) == [(502, 501, 0)]
    assert [row["action"] for row in audit_rows(app.db, 501)][-1] == "referral_bonus_withheld"


def test_a_mismatched_payment_earns_nothing(bot, app, telegram, cryptopay):
    arrive(bot, 502, link_of(bot, telegram, 501))
    assert paid(app, cryptopay, user_id=502, amount="1").outcome is Outcome.MISMATCH
    assert bonuses(app) == [] and app.db.expires_at(501) is None


# --- what the owner sees ---

def test_admins_see_the_top_referrers_stats_and_the_referrer_in_the_export(bot, app, telegram, cryptopay, env,
                                                                            tmp_path):
    a_ref, b_ref = link_of(bot, telegram, 501), link_of(bot, telegram, 502)
    app.db.upsert_member(501, "alice", "Alice", "en", app.now())
    for user in (503, 504, 505):
        arrive(bot, user, a_ref)
    arrive(bot, 506, b_ref)
    paid(app, cryptopay, user_id=503)
    paid(app, cryptopay, user_id=504)
    command(bot, "/referrals", user_id=ADMIN)
    lines = last_text(telegram, ADMIN).splitlines()
    assert lines[0].startswith("Top referrers")
    assert lines[1:] == ["@alice (id 501): 3, 2, 14 days", "@m502 (id 502): 1, 0, 0"]
    stats = admin.stats_text(app.db, app.now(), "en")
    assert "Referrals: 4 members came by an invitation, 2 bonuses given (14 days)" in stats
    code, out, err = run_cli({**env, "REFERRAL_BONUS": "7d"}, tmp_path, "referrals", "--top", "1")
    assert code == 0, err
    assert out.splitlines()[1:] == ["@alice (id 501): 3, 2, 14 days"]
    code, _, err = run_cli(env, tmp_path, "referrals", "--top", "-5")
    assert code == 2 and "not a whole number from 1 to 1000" in err
    buffer = io.StringIO()
    admin.write_csv(app.db, buffer)
    rows = [row for row in csv.DictReader(io.StringIO(buffer.getvalue())) if row["user_id"] == "503"]
    assert [row["referred_by"] for row in rows] == ["501"]


def test_referrals_say_when_the_programme_is_off(make_app, telegram):
    off = make_app()
    register_handlers(off.bot, off)
    command(off.bot, "/referrals", user_id=ADMIN)
    assert last_text(telegram, ADMIN).startswith("Referrals are off: set REFERRAL_BONUS")


def test_a_bonus_beyond_a_year_or_not_a_duration_is_a_config_error(make_config):
    import config
    for bad in ("400d", "seven", "0s"):
        with pytest.raises(config.ConfigError):
            make_config(REFERRAL_BONUS=bad)
    assert make_config(REFERRAL_BONUS="").referral_bonus is None
    assert make_config(REFERRAL_BONUS="12h").referral_bonus == 12 * 3600
