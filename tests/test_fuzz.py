"""Fuzzing with hypothesis: bad input never gets a 5xx, never changes the database, never crashes."""
import json
import logging
import operator
import socket
import string

import pytest
from builders import callback_query, feed, message, person
from conftest import PAY_TOKEN, InProcess, health_stays_quick
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import config as config_module
from config import SETTINGS, ConfigError
from cryptopay import signature
from handlers import register_handlers
from webhook_server import make_wsgi_app

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
invoice_like = st.fixed_dictionaries({}, optional={
    "invoice_id": st.integers(-5, 10**12) | st.text(max_size=5) | st.none(),
    "status": st.sampled_from(["paid", "active", "expired", "PAID", ""]) | json_values,
    "asset": st.sampled_from(["USDT", "TON", ""]) | json_values,
    "fiat": st.sampled_from(["USD", ""]) | json_values,
    "currency_type": st.sampled_from(["crypto", "fiat", "x"]) | json_values,
    "amount": st.sampled_from(["5", "5.00", "-1", "1e999", "NaN", "Infinity", "", "0x10"]) | json_values,
    "payload": st.text(max_size=40) | json_values,
    "paid_at": st.sampled_from(["2026-01-01T00:00:00Z", "yesterday", ""]) | json_values,
})
updates = st.fixed_dictionaries({}, optional={
    "update_id": json_values, "update_type": st.sampled_from(["invoice_paid", "other"]) | json_values,
    "request_date": json_values, "payload": invoice_like | json_values,
})
# What the bot's own buttons carry (a plan, an invoice to check), followed by anything.
button_data = st.builds(operator.add, st.sampled_from(["plan:", "check:"]), st.text(max_size=58))


def snapshot(app) -> list:
    conn = app.db.connect()
    return [conn.execute(f"SELECT * FROM {table}").fetchall() for table in
            ("members", "invoices", "subscriptions", "outbox", "audit", "state", "unusable_webhooks")]


def call(wsgi: InProcess, method: str, body: bytes, headers: dict) -> int:
    return wsgi.request(method, "/webhook/cryptobot", body, headers=headers).status_code


@pytest.fixture
def wsgi(app) -> InProcess:
    app.db.upsert_member(501, "m", "M", "en", app.now())  # a member, but no invoice is ours
    return InProcess(make_wsgi_app(app), app)


@FUZZ
@given(body=st.binary(max_size=300), header=st.text(max_size=80) | st.none())
def test_any_unsigned_or_badly_signed_body_is_refused_and_changes_nothing(app, wsgi, body, header):
    before = snapshot(app)
    headers = {} if header is None else {"crypto-pay-api-signature": header}
    assert call(wsgi, "POST", body, headers) == 401
    assert snapshot(app) == before


def snapshot_but_the_record(app) -> list:
    """Everything a signed update may not change: all but the record of an unusable one and
    its alert to the admins (the outbox row, its audit row, the alert's state)."""
    conn = app.db.connect()
    return [*snapshot(app)[:3],
            conn.execute("SELECT * FROM outbox WHERE kind != 'admin_webhook_unusable'").fetchall(),
            conn.execute("SELECT * FROM audit WHERE action NOT LIKE 'admin_webhook_%'").fetchall(),
            conn.execute("SELECT * FROM state WHERE key != 'webhook_unusable'").fetchall()]


def unusable_count(app) -> int:
    return app.db.connect().execute("SELECT count(*) FROM unusable_webhooks").fetchone()[0]


@FUZZ
@given(update=updates | json_values)
def test_any_signed_update_gets_200_and_changes_nothing_but_the_record(app, wsgi, update):
    body = json.dumps(update).encode()
    before, kept = snapshot_but_the_record(app), unusable_count(app)
    status = call(wsgi, "POST", body, {"crypto-pay-api-signature": signature(PAY_TOKEN, body)})
    assert status == 200
    assert snapshot_but_the_record(app) == before  # none of these invoices is ours
    assert unusable_count(app) - kept in (0, 1)
    alerts = app.db.connect().execute(
        "SELECT count(*) FROM outbox WHERE kind = 'admin_webhook_unusable'").fetchone()[0]
    assert alerts == (1 if unusable_count(app) else 0)  # once, however many: no webhook of ours is used


@FUZZ
@given(body=st.binary(max_size=200))
def test_signed_garbage_is_200_and_kept(app, wsgi, body):
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    kept = unusable_count(app)
    status = call(wsgi, "POST", body, {"crypto-pay-api-signature": signature(PAY_TOKEN, body)})
    assert status == 200
    if not isinstance(parsed, dict):
        assert unusable_count(app) == kept + 1
        stored = app.db.connect().execute("SELECT body FROM unusable_webhooks ORDER BY id DESC").fetchone()[0]
        assert bytes(stored) == body


@FUZZ
@given(name=st.sampled_from(sorted(SETTINGS)), value=st.text(alphabet=string.printable, max_size=40))
def test_any_config_value_is_taken_or_refused_with_its_name(env, name, value):
    try:
        config_module.load({**env, name: value}, env_file=None)
    except ConfigError as error:
        assert error.name == name
        assert "\n" not in str(error) or "\n" in value


@FUZZ
@given(text=st.text(max_size=60), data=st.text(max_size=64) | button_data,
       lang=st.sampled_from(["ru", "en", "de", None]), under_a_message=st.booleans())
def test_any_message_or_button_is_answered_without_a_crash(app, telegram, text, data, lang, under_a_message,
                                                           caplog):
    if not getattr(app, "_registered", False):
        register_handlers(app.bot, app)
        app._registered = True
    sender = person(501, lang, first_name="M", username=None)
    subscriptions_before = app.db.connect().execute("SELECT * FROM subscriptions").fetchall()
    with caplog.at_level(logging.ERROR):
        feed(app.bot, message(text or "/", sender=sender), callback_query(data, sender=sender, message=under_a_message))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    if not data.startswith(("plan:trial", "check:")):
        assert app.db.connect().execute("SELECT * FROM subscriptions").fetchall() == subscriptions_before


def test_slow_clients_do_not_hold_up_others(server):
    """20 clients that send a request a byte at a time, bounded in count and time."""
    host, port = server.removeprefix("http://").split(":")
    slow = []
    try:
        for _ in range(20):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"POST /webhook/cryptobot HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            slow.append(sock)
        health_stays_quick(server, slow)
    finally:
        for sock in slow:
            sock.close()
