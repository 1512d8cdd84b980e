"""The Crypto Pay client's getBalance and transfer against FakeCryptoPay over HTTP, and the
fake Telegram's Stars methods through a real TeleBot."""
from __future__ import annotations

import json
from decimal import Decimal

import pytest
from conftest import BOT_TOKEN, PAY_TOKEN, START
from fakes import pre_checkout_query, successful_payment_message
from telebot import types
from telebot.apihelper import ApiTelegramException

from cryptopay import (
    ERR_INSUFFICIENT_FUNDS,
    ERR_SPEND_ID_USED,
    ERR_TRANSFERS_DISABLED,
    TRANSFER_ERRORS,
    CryptoPay,
    CryptoPayError,
    Transfer,
    parse_transfer,
)
from tg import make_bot

MONTH = 2592000


@pytest.fixture
def client(cryptopay) -> CryptoPay:
    return CryptoPay(cryptopay.api_url, PAY_TOKEN)


@pytest.fixture
def bot(telegram):
    return make_bot(BOT_TOKEN, telegram.url)


# Crypto Pay -------------------------------------------------------------------------------

def test_get_balance_reads_available_per_currency(client, cryptopay):
    cryptopay.balances = {"USDT": Decimal("12.5"), "TON": Decimal("0")}
    assert client.get_balance() == {"USDT": Decimal("12.5"), "TON": Decimal("0")}
    assert cryptopay.called("getBalance") == [{}]


def test_a_transfer_is_made_and_deducted(client, cryptopay):
    made = client.transfer(42, "USDT", Decimal("2.50"), "payout-1", comment="Thanks")
    assert isinstance(made, Transfer)
    assert made.transfer_id > 0 and made.spend_id == "payout-1" and made.user_id == 42
    assert (made.asset, made.amount, made.status) == ("USDT", Decimal("2.50"), "completed")
    assert made.completed_at and made.comment == "Thanks"
    sent = cryptopay.called("transfer")[0]
    assert sent == {"user_id": 42, "asset": "USDT", "amount": "2.50", "spend_id": "payout-1", "comment": "Thanks"}
    assert client.get_balance()["USDT"] == Decimal("997.50")


def test_the_same_spend_id_is_refused_and_paid_once(client, cryptopay):
    client.transfer(42, "TON", Decimal("3"), "payout-2")
    with pytest.raises(CryptoPayError) as caught:
        client.transfer(42, "TON", Decimal("3"), "payout-2")
    error = caught.value
    assert (error.method, error.name, error.status) == ("transfer", ERR_SPEND_ID_USED, 400)
    assert error.is_duplicate_spend and not error.is_refused and not error.is_auth_error
    assert cryptopay.balances["TON"] == Decimal("997")
    assert list(cryptopay.transfers) == ["payout-2"]


def test_insufficient_funds(client, cryptopay):
    cryptopay.balances["USDT"] = Decimal("1")
    with pytest.raises(CryptoPayError) as caught:
        client.transfer(42, "USDT", Decimal("1.01"), "payout-3")
    assert caught.value.name == ERR_INSUFFICIENT_FUNDS
    assert caught.value.is_refused and not caught.value.is_duplicate_spend
    assert caught.value.advice == TRANSFER_ERRORS[ERR_INSUFFICIENT_FUNDS]
    assert cryptopay.balances["USDT"] == Decimal("1") and cryptopay.transfers == {}
    # an asset the app holds none of
    with pytest.raises(CryptoPayError, match=ERR_INSUFFICIENT_FUNDS):
        client.transfer(42, "ETH", Decimal("0.1"), "payout-4")


def test_transfers_disabled_for_the_app(client, cryptopay):
    cryptopay.transfers_enabled = False
    with pytest.raises(CryptoPayError) as caught:
        client.transfer(42, "USDT", Decimal("1"), "payout-5")
    assert caught.value.name == ERR_TRANSFERS_DISABLED and caught.value.is_refused
    assert "Security" in caught.value.advice
    cryptopay.transfers_enabled = True  # the owner turned it on: the same spend_id now goes through
    assert client.transfer(42, "USDT", Decimal("1"), "payout-5").amount == Decimal("1")


def test_unknown_recipient_and_minimum(client, cryptopay):
    cryptopay.known_users = {7}
    with pytest.raises(CryptoPayError) as caught:
        client.transfer(42, "USDT", Decimal("1"), "payout-6")
    assert caught.value.name == "USER_NOT_FOUND" and caught.value.is_refused
    cryptopay.min_transfer["USDT"] = Decimal("1")
    with pytest.raises(CryptoPayError) as caught:
        client.transfer(7, "USDT", Decimal("0.5"), "payout-7")
    assert caught.value.name == "AMOUNT_TOO_SMALL" and caught.value.is_refused


def test_outages_are_not_refusals(client, cryptopay):
    cryptopay.fail("transfer", (500, {"ok": False, "error": {"code": 500, "name": "INTERNAL_ERROR"}}),
                   (502, b"<html>bad gateway</html>"))
    for _ in range(2):
        with pytest.raises(CryptoPayError) as caught:
            client.transfer(42, "USDT", Decimal("1"), "payout-8")
        assert not caught.value.is_refused and not caught.value.is_duplicate_spend
    unreachable = CryptoPay("http://127.0.0.1:9/api", PAY_TOKEN, timeout=(0.5, 0.5))
    with pytest.raises(CryptoPayError) as caught:
        unreachable.transfer(42, "USDT", Decimal("1"), "payout-8")
    assert caught.value.name == "NETWORK_ERROR" and not caught.value.is_refused
    assert cryptopay.transfers == {}


def test_transfer_arguments_are_checked_before_calling(client, cryptopay):
    with pytest.raises(ValueError):
        client.transfer(42, "USDT", Decimal("1"), "x" * 65)
    with pytest.raises(ValueError):
        client.transfer(42, "USDT", Decimal("0"), "payout-9")
    client.transfer(42, "USDT", Decimal("1"), "x" * 64, comment="c" * 2000)
    assert len(cryptopay.called("transfer")[0]["comment"]) == 1024


def test_malformed_answers_are_bad_responses(client, cryptopay):
    cryptopay.fail("getBalance", (200, {"ok": True, "result": {"USDT": "1"}}))
    with pytest.raises(CryptoPayError, match="BAD_RESPONSE"):
        client.get_balance()
    cryptopay.fail("transfer", (200, {"ok": True, "result": {"transfer_id": "x"}}))
    with pytest.raises(CryptoPayError) as caught:
        client.transfer(42, "USDT", Decimal("1"), "payout-10")
    assert caught.value.name == "BAD_RESPONSE" and not caught.value.is_refused
    with pytest.raises(ValueError):
        parse_transfer({"transfer_id": 1, "spend_id": "s", "user_id": 1, "asset": "USDT",
                        "amount": "NaN", "status": "completed"})


# Telegram Stars ----------------------------------------------------------------------------

def test_create_invoice_link_for_a_subscription(bot, telegram):
    link = bot.create_invoice_link("Club", "30 days", "plan:month", None, "XTR",
                                   [types.LabeledPrice("Month", 250)], subscription_period=MONTH)
    assert link.startswith("https://t.me/$")
    made = telegram.invoice_links[link]
    assert (made["title"], made["payload"], made["currency"], made["subscription_period"]) == \
        ("Club", "plan:month", "XTR", MONTH)
    assert json.loads(made["prices"]) == [{"label": "Month", "amount": 250}]
    other = bot.create_invoice_link("Club", "once", "plan:once", None, "XTR", [types.LabeledPrice("Once", 5)])
    assert other != link and telegram.invoice_links[other]["subscription_period"] is None


def test_pre_checkout_and_payment_updates_parse(bot, telegram):
    query = types.PreCheckoutQuery.de_json(pre_checkout_query(501, "plan:month", 250))
    assert (query.from_user.id, query.currency, query.total_amount, query.invoice_payload) == \
        (501, "XTR", 250, "plan:month")
    assert bot.answer_pre_checkout_query(query.id, ok=True) is True
    assert telegram.pre_checkout_answers[0]["pre_checkout_query_id"] == query.id

    payment = telegram.star_payment(501, "plan:month", 250, subscription_period=MONTH, date=START)
    message = types.Message.de_json(successful_payment_message(501, payment))
    paid = message.successful_payment
    assert (message.chat.id, message.from_user.id, paid.currency, paid.total_amount) == (501, 501, "XTR", 250)
    assert paid.telegram_payment_charge_id.startswith("stx") and paid.provider_payment_charge_id == ""
    assert paid.subscription_expiration_date == START + MONTH
    assert paid.is_recurring is True and paid.is_first_recurring is True
    update = telegram.push_update({"message": successful_payment_message(501, payment)})
    assert types.Update.de_json(update).message.successful_payment.invoice_payload == "plan:month"


def test_renewals_until_canceled(bot, telegram):
    first = telegram.star_payment(501, "plan:month", 250, subscription_period=MONTH, date=START)
    charge = first["telegram_payment_charge_id"]
    renewal = telegram.renew(charge)
    assert renewal["telegram_payment_charge_id"] != charge
    assert (renewal["is_recurring"], renewal["is_first_recurring"]) == (True, False)
    assert renewal["subscription_expiration_date"] == START + 2 * MONTH
    assert renewal["invoice_payload"] == "plan:month" and renewal["total_amount"] == 250

    assert bot.edit_user_star_subscription(501, charge, is_canceled=True) is True
    assert telegram.star_subscriptions[charge]["canceled"] is True
    assert telegram.renew(charge) is None
    assert bot.edit_user_star_subscription(501, charge, is_canceled=False) is True
    assert telegram.star_subscriptions[charge]["canceled"] is False
    assert telegram.renew(charge)["subscription_expiration_date"] == START + 3 * MONTH

    with pytest.raises(ApiTelegramException) as caught:
        bot.edit_user_star_subscription(501, "stxUnknown", is_canceled=True)
    assert caught.value.error_code == 400 and "CHARGE_NOT_FOUND" in caught.value.description
    once = telegram.star_payment(501, "plan:once", 5)  # not a subscription
    with pytest.raises(ApiTelegramException, match="CHARGE_NOT_FOUND"):
        bot.edit_user_star_subscription(501, once["telegram_payment_charge_id"], is_canceled=True)


def test_refund_once(bot, telegram):
    payment = telegram.star_payment(501, "plan:month", 250, subscription_period=MONTH, date=START)
    charge = payment["telegram_payment_charge_id"]
    assert bot.refund_star_payment(501, charge) is True
    assert charge in telegram.refunded
    assert telegram.star_subscriptions[charge]["canceled"] is True and telegram.renew(charge) is None
    with pytest.raises(ApiTelegramException) as caught:
        bot.refund_star_payment(501, charge)
    assert caught.value.error_code == 400 and "CHARGE_ALREADY_REFUNDED" in caught.value.description
    with pytest.raises(ApiTelegramException, match="CHARGE_NOT_FOUND"):
        bot.refund_star_payment(501, "stxNoSuchCharge")
    other = telegram.star_payment(502, "plan:once", 5)
    with pytest.raises(ApiTelegramException, match="CHARGE_NOT_FOUND"):  # another user's charge
        bot.refund_star_payment(501, other["telegram_payment_charge_id"])


def test_star_transactions_are_paged_oldest_first(bot, telegram):
    telegram.now = lambda: START + 10_000
    charges = [telegram.star_payment(500 + n, f"p{n}", 10 + n, date=START + n * 100)["telegram_payment_charge_id"]
               for n in range(5)]
    sub = telegram.star_payment(600, "plan:month", 250, subscription_period=MONTH, date=START + 50)
    bot.refund_star_payment(502, charges[2])

    everything = bot.get_star_transactions()
    assert isinstance(everything, types.StarTransactions)
    listed = everything.transactions
    assert [t.date for t in listed] == sorted(t.date for t in listed)
    assert [t.id for t in listed] == [charges[0], sub["telegram_payment_charge_id"], *charges[1:], charges[2]]

    first = listed[0]
    assert isinstance(first.source, types.TransactionPartnerUser) and first.receiver is None
    assert (first.amount, first.source.user.id, first.source.invoice_payload) == (10, 500, "p0")
    assert first.source.subscription_period is None
    assert listed[1].source.subscription_period == MONTH and listed[1].source.invoice_payload == "plan:month"
    refund = listed[-1]
    assert refund.source is None and isinstance(refund.receiver, types.TransactionPartnerUser)
    assert (refund.amount, refund.receiver.user.id, refund.date) == (12, 502, START + 10_000)

    page = bot.get_star_transactions(offset=2, limit=3).transactions
    assert [t.id for t in page] == [t.id for t in listed[2:5]]
    assert [t.id for t in bot.get_star_transactions(offset=6).transactions] == [charges[2]]
    assert bot.get_star_transactions(offset=7).transactions == []
    assert telegram.called("getStarTransactions")[1] == {"offset": "2", "limit": "3"}


def test_star_transactions_limit_is_at_most_100(bot, telegram):
    for n in range(120):
        telegram.star_payment(700, f"p{n}", 1, date=START + n)
    assert len(bot.get_star_transactions().transactions) == 100
    assert len(bot.get_star_transactions(limit=500).transactions) == 100
    assert len(bot.get_star_transactions(offset=100).transactions) == 20
