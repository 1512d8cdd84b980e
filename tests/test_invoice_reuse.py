"""An invoice is reused only while it buys exactly what the member is shown today."""
import pytest
from builders import buttons, press
from conftest import START
from test_bot import last_message

from handlers import register_handlers
from payments import buy

DAY = 86400
PLANS = "month:30d:5:USDT,year:365d:50:USDT,trial:3d:0:USDT"


@pytest.fixture
def restart(make_app, app):
    """Build the app again on the same database with other settings, as a restart after the
    owner edited .env does."""
    def make(**overrides: str):
        application = make_app(**overrides)
        register_handlers(application.bot, application)
        return application

    return make


def pay_button(telegram) -> str:
    return buttons(last_message(telegram))[0]["url"]


def test_a_plan_made_longer_at_the_same_price_gets_a_new_invoice_for_the_new_duration(
        app, restart, telegram, cryptopay):
    register_handlers(app.bot, app)
    press(app.bot, "plan:month")
    assert "30 days: 5 USDT" in last_message(telegram)["text"]
    assert pay_button(telegram) == "https://t.me/CryptoBot?start=IV1001"

    unchanged = restart(PLANS=PLANS)
    press(unchanged.bot, "plan:month")
    assert pay_button(telegram) == "https://t.me/CryptoBot?start=IV1001"  # the same terms: reused
    assert len(cryptopay.called("createInvoice")) == 1

    longer = restart(PLANS=PLANS.replace("month:30d", "month:90d"))
    press(longer.bot, "plan:month")
    shown = last_message(telegram)
    assert "90 days: 5 USDT" in shown["text"]
    assert pay_button(telegram) == "https://t.me/CryptoBot?start=IV1002"
    assert len(cryptopay.called("createInvoice")) == 2
    newest = longer.db.connect().execute("SELECT * FROM invoices WHERE invoice_id = 1002").fetchone()
    assert newest["duration"] == 90 * DAY and newest["status"] == "pending"

    press(longer.bot, "plan:month")  # and the new one is reused in its turn
    assert pay_button(telegram) == "https://t.me/CryptoBot?start=IV1002"
    assert len(cryptopay.called("createInvoice")) == 2


def test_a_fiat_invoice_is_not_reused_once_the_accepted_assets_change(app, restart, cryptopay):
    fiat_plans = "month:30d:10:USD"
    before = restart(PLANS=fiat_plans, ACCEPTED_ASSETS="USDT,TON")
    before.db.upsert_member(501, "m501", "Member", "en", START)
    first = buy(before, 501, before.config.plan("month"), "month").invoice

    after = restart(PLANS=fiat_plans, ACCEPTED_ASSETS="USDT")
    second = buy(after, 501, after.config.plan("month"), "month").invoice
    assert second["payment_uuid"] != first["payment_uuid"]
    assert [c.get("accepted_assets") for c in cryptopay.called("createInvoice")] == ["USDT,TON", "USDT"]
    assert buy(after, 501, after.config.plan("month"), "month").invoice["payment_uuid"] == second["payment_uuid"]


def test_an_invoice_is_reused_only_for_the_same_plan_duration_price_and_kind_of_currency(app, cryptopay):
    from decimal import Decimal

    app.db.upsert_member(501, "m501", "Member", "en", START)
    row = buy(app, 501, app.config.plan("month"), "month").invoice
    same = ("month", 30 * DAY, Decimal("5"), "USDT", False, ())
    assert app.db.reusable_invoice(501, *same, START)["payment_uuid"] == row["payment_uuid"]
    for changed in (("year", 30 * DAY, Decimal("5"), "USDT", False, ()),
                    ("month", 90 * DAY, Decimal("5"), "USDT", False, ()),
                    ("month", 30 * DAY, Decimal("6"), "USDT", False, ()),
                    ("month", 30 * DAY, Decimal("5"), "TON", False, ()),
                    ("month", 30 * DAY, Decimal("5"), "USDT", True, ())):
        assert app.db.reusable_invoice(501, *changed, START) is None, changed
