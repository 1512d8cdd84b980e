"""What the poller tells the admins: invoices Crypto Pay returns unreadable, and webhooks
that do not arrive. On the injected clock, against the fake Crypto Pay."""
import json

import pytest
from builders import audit_rows, paid_update, pending_invoice
from conftest import START

from outbox import Sender
from payments import FORGET_AFTER, WEBHOOK_GRACE, WebhookWatch, check, poll_once
from workers import Poller

ADMINS = (9000, 9001)
MONTH = 30 * 86400


@pytest.fixture
def webhook_url() -> str:
    return "https://club.example.com"


@pytest.fixture
def app(make_app, webhook_url):
    """conftest's app, with two admins and WEBHOOK_URL (the client fixture uses this one too)."""
    return make_app(ADMIN_IDS=",".join(map(str, ADMINS)), WEBHOOK_URL=webhook_url)


def spoil(cryptopay, number: int, **fields) -> None:
    """Crypto Pay answers invoice `number` in a shape parse_invoice refuses."""
    with cryptopay.lock:
        cryptopay.invoices[number].update(fields)


def alerts(app, problem: str | None) -> list[tuple[int, dict]]:
    """The alerts queued to admins: of unreadable invoices, or (None) of webhooks not arriving."""
    kind = {"unreadable_invoice": "admin_invoice_unreadable", None: "admin_webhook"}[problem]
    rows = app.db.connect().execute("SELECT chat_id, payload FROM outbox WHERE kind = ? ORDER BY id", (kind,))
    return [(r["chat_id"], json.loads(r["payload"])) for r in rows]


# --- invoices Crypto Pay returns in a form we cannot read ---

def test_a_paid_invoice_the_poller_cannot_read_stays_pending_alerts_once_and_is_applied_when_readable(
        app, cryptopay, clock):
    """It used to be counted missing, and expired a day later: paid, and nothing given."""
    row = pending_invoice(app, 501)
    cryptopay.pay(row["invoice_id"])
    spoil(cryptopay, row["invoice_id"], amount=5)  # a number, not a decimal string
    for _ in range(60):  # five days of polls, hours apart
        poll_once(app)
        clock.advance(2 * 3600)
    assert clock.now() - row["expires_at"] > FORGET_AFTER
    assert app.db.invoice_by_uuid(row["payment_uuid"])["status"] == "pending"
    assert len(cryptopay.called("getInvoices")) == 60  # asked about again at every poll
    told = alerts(app, "unreadable_invoice")
    assert [chat for chat, _ in told] == list(ADMINS)
    assert told[0][1]["invoice_id"] == row["invoice_id"] and told[0][1]["user_id"] == 501
    assert "amount is not a decimal string" in told[0][1]["error"]
    audit = [(r["action"], r["cause"], r["invoice_id"]) for r in audit_rows(app.db, 501)]
    assert audit == [("invoice_unreadable", "poller", row["invoice_id"])]
    spoil(cryptopay, row["invoice_id"], amount="5")
    poll_once(app)
    assert app.db.invoice_by_uuid(row["payment_uuid"])["status"] == "paid"
    assert app.db.expires_at(501) == clock.now() + MONTH
    assert len(alerts(app, "unreadable_invoice")) == len(ADMINS)


def test_an_unreadable_item_without_an_invoice_id_lets_no_invoice_expire_as_missing(app, cryptopay, clock):
    gone = pending_invoice(app, 501)
    hidden = pending_invoice(app, 502)
    with cryptopay.lock:  # Crypto Pay no longer returns it
        del cryptopay.invoices[gone["invoice_id"]]
    cryptopay.pay(hidden["invoice_id"])
    spoil(cryptopay, hidden["invoice_id"], invoice_id="#1002")  # it could be any pending invoice
    clock.advance(3600 + FORGET_AFTER + 60)
    poll_once(app)
    assert app.db.pending_invoice_ids() == [gone["invoice_id"], hidden["invoice_id"]]
    assert alerts(app, "unreadable_invoice") == []  # no invoice to name
    spoil(cryptopay, hidden["invoice_id"], invoice_id=hidden["invoice_id"])
    poll_once(app)
    assert app.db.invoice_by_uuid(gone["payment_uuid"])["status"] == "expired"
    assert app.db.invoice_by_uuid(hidden["payment_uuid"])["status"] == "paid"


def test_the_check_button_does_not_send_a_member_with_an_unreadable_invoice_to_buy_again(app, cryptopay):
    row = pending_invoice(app, 501)
    cryptopay.pay(row["invoice_id"])
    spoil(cryptopay, row["invoice_id"], status="PAID")
    assert check(app, row["payment_uuid"], 501) == "check_failed"  # "try again", not "get a new invoice"
    assert check(app, row["payment_uuid"], 501) == "check_failed"
    assert app.db.invoice_by_uuid(row["payment_uuid"])["status"] == "pending"
    assert len(alerts(app, "unreadable_invoice")) == len(ADMINS)


def test_admins_read_the_unreadable_invoice_alert(app, cryptopay, telegram):
    for admin in ADMINS:
        app.db.upsert_member(admin, None, "Admin", "en", app.now())
    row = pending_invoice(app, 501)
    spoil(cryptopay, row["invoice_id"], amount=None)
    poll_once(app)
    while Sender(app).run_once():
        pass
    for admin in ADMINS:
        [message] = telegram.messages_to(admin)
        assert message["text"].startswith(f"Crypto Pay returns invoice {row['invoice_id']} (member 501)")


# --- webhooks that do not arrive ---

def poller_pays(app, cryptopay, watch: WebhookWatch, *users: int) -> list:
    rows = [pending_invoice(app, user) for user in users]
    for row in rows:
        cryptopay.pay(row["invoice_id"])
    poll_once(app, watch)
    assert all(app.db.invoice_by_uuid(r["payment_uuid"])["applied_by"] == "poller" for r in rows)
    return rows


def test_a_webhook_records_its_arrival_whether_it_applies_the_payment_or_repeats_it(app, cryptopay, clock):
    from cryptopay import parse_invoice

    by_webhook, by_poller = pending_invoice(app, 501), pending_invoice(app, 502)
    paid = {row["payment_uuid"]: parse_invoice(cryptopay.pay(row["invoice_id"])) for row in (by_webhook, by_poller)}
    app.db.apply_invoice(paid[by_webhook["payment_uuid"]], "webhook", app.now(), app.config.admin_ids)
    app.db.apply_invoice(paid[by_poller["payment_uuid"]], "poller", app.now(), app.config.admin_ids)

    def arrived(row):
        return app.db.invoice_by_uuid(row["payment_uuid"])["webhook_at"]

    assert (arrived(by_webhook), arrived(by_poller)) == (START, None)
    assert not app.db.webhook_seen_since(START + 1)
    clock.advance(50)
    # Deliveries again: the first of a second is written, and answers the watch's question
    # (did any webhook come since?) for that whole second; the rest of it write nothing.
    for row in (by_poller, by_webhook, by_poller):
        app.db.apply_invoice(paid[row["payment_uuid"]], "webhook", app.now(), app.config.admin_ids)
    assert (arrived(by_webhook), arrived(by_poller)) == (START, START + 50)
    assert app.db.webhook_seen_since(START + 50) and not app.db.webhook_seen_since(START + 51)
    clock.advance(1)
    app.db.apply_invoice(paid[by_webhook["payment_uuid"]], "webhook", app.now(), app.config.admin_ids)
    assert (arrived(by_webhook), arrived(by_poller)) == (START + 51, START + 50)
    assert app.db.webhook_seen_since(START + 51)


def test_poller_payments_with_no_webhook_within_the_grace_alert_each_admin_once(app, cryptopay, clock):
    """It used to alert only when the poller found a payment over 120 s old, which at a 30 s
    POLL_INTERVAL it never does: the owner of a broken webhook was never told."""
    watch = WebhookWatch()
    poller_pays(app, cryptopay, watch, 501, 502)
    clock.advance(WEBHOOK_GRACE - 1)
    poller_pays(app, cryptopay, watch, 503)
    watch.check(app)
    assert alerts(app, None) == []  # a webhook may still come
    clock.advance(1)
    watch.check(app)
    assert [chat for chat, _ in alerts(app, None)] == list(ADMINS)
    clock.advance(WEBHOOK_GRACE)
    watch.check(app)
    poller_pays(app, cryptopay, watch, 504)  # the same outage
    clock.advance(WEBHOOK_GRACE)
    watch.check(app)
    assert [chat for chat, _ in alerts(app, None)] == list(ADMINS)
    assert watch.applied == {}


def test_a_webhook_that_comes_late_but_within_the_grace_means_no_alert(app, cryptopay, clock, client):
    watch = WebhookWatch()
    [row] = poller_pays(app, cryptopay, watch, 501)
    clock.advance(WEBHOOK_GRACE - 30)
    invoice = cryptopay.invoices[row["invoice_id"]]
    assert client.post_signed("/webhook/cryptobot", paid_update(invoice)).status_code == 200
    assert app.db.invoice_by_uuid(row["payment_uuid"])["webhook_at"] == clock.now()  # a duplicate, recorded
    clock.advance(WEBHOOK_GRACE)
    watch.check(app)
    assert alerts(app, None) == []


@pytest.mark.parametrize("duplicate", [False, True], ids=["new payment", "duplicate of an old one"])
def test_a_webhook_for_another_payment_after_the_poller_applied_one_means_no_alert(app, cryptopay, clock, client,
                                                                                    duplicate):
    other = pending_invoice(app, 502)
    body = paid_update(cryptopay.pay(other["invoice_id"]))
    if duplicate:  # applied by its webhook long ago; CryptoBot delivers it again
        assert client.post_signed("/webhook/cryptobot", body).status_code == 200
        clock.advance(3600)
    watch = WebhookWatch()
    poller_pays(app, cryptopay, watch, 501)
    clock.advance(10)
    assert client.post_signed("/webhook/cryptobot", body).status_code == 200
    clock.advance(WEBHOOK_GRACE)
    watch.check(app)
    assert alerts(app, None) == []


def test_after_an_alert_a_working_webhook_then_a_poller_only_payment_alerts_again(app, cryptopay, clock, client):
    watch = WebhookWatch()
    poller_pays(app, cryptopay, watch, 501)
    clock.advance(WEBHOOK_GRACE)
    watch.check(app)
    assert len(alerts(app, None)) == len(ADMINS)
    row = pending_invoice(app, 502)
    assert client.post_signed("/webhook/cryptobot", paid_update(cryptopay.pay(row["invoice_id"]))).status_code == 200
    clock.advance(1)
    poller_pays(app, cryptopay, watch, 503)
    clock.advance(WEBHOOK_GRACE)
    watch.check(app)
    assert [chat for chat, _ in alerts(app, None)] == [*ADMINS, *ADMINS]


@pytest.mark.parametrize("webhook_url", [""])
def test_without_webhook_url_poller_payments_never_alert(app, cryptopay, clock):
    watch = WebhookWatch()
    for user in range(501, 505):
        poller_pays(app, cryptopay, watch, user)
        clock.advance(WEBHOOK_GRACE + 1)
        watch.check(app)
    assert alerts(app, None) == [] and watch.applied == {}


def test_the_poller_thread_tells_admins_when_webhooks_do_not_come(app, cryptopay, clock, monkeypatch, telegram):
    for admin in ADMINS:
        app.db.upsert_member(admin, None, "Admin", "en", app.now())
    pending_invoice(app, 501)
    cryptopay.pay(app.db.pending_invoice_ids()[0])
    turns = []

    def wait(delay=None):  # each turn of the loop moves the clock by the poll interval
        turns.append(delay)
        clock.advance(30)
        if len(turns) > 10:
            app.stop.set()
        return app.stop.is_set()

    monkeypatch.setattr(app.stop, "wait", wait)
    Poller(app).run()
    monkeypatch.undo()
    app.stop.clear()  # for the sender below
    assert app.db.expires_at(501) == START + 30 + MONTH  # at the first turn
    while Sender(app).run_once():
        pass
    for admin in ADMINS:
        [message] = telegram.messages_to(admin)
        assert "webhook never came" in message["text"]
        assert "https://club.example.com/webhook/cryptobot" in message["text"]


def test_without_a_webhook_the_poller_looks_every_few_seconds_and_a_shorter_interval_wins(make_config):
    from payments import POLL_WITHOUT_WEBHOOK, poll_every

    assert poll_every(make_config(POLL_INTERVAL="30s", WEBHOOK_URL="")) == POLL_WITHOUT_WEBHOOK == 3
    assert poll_every(make_config(POLL_INTERVAL="1s", WEBHOOK_URL="")) == 1
    assert poll_every(make_config(POLL_INTERVAL="30s", WEBHOOK_URL="https://club.example.com")) == 30
