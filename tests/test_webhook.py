"""POST /webhook/cryptobot and GET /health: what the app decides, called in process (the `client`
fixture), and through a real waitress server on 127.0.0.1 where HTTP itself matters (body limits,
status lines, proxy headers, many connections at once)."""
import json
import logging
import sqlite3
import threading
from decimal import Decimal

import pytest
import requests
from builders import audit_rows, crypto_pay_update, paid_invoice, paid_update
from conftest import ADMIN, PAY_TOKEN, START, InProcess, post_signed

from cryptopay import signature, signature_matches

SPEC_BODY = (b'{"update_id":1,"update_type":"invoice_paid","request_date":"2024-01-01T00:00:00.000Z",'
             b'"payload":{"invoice_id":42,"status":"paid","asset":"USDT","amount":"2.6"}}')
SPEC_SIGNATURE = "e2bbbd4f8a484e49975b1438e084b2b6654546ba05b40f6398e069eb6909963b"


def test_it_signs_the_spec_test_vector():
    assert signature("1234:TESTTOKEN", SPEC_BODY) == SPEC_SIGNATURE
    assert signature_matches("1234:TESTTOKEN", SPEC_BODY, SPEC_SIGNATURE)
    assert signature_matches("1234:TESTTOKEN", SPEC_BODY, SPEC_SIGNATURE.upper())
    assert not signature_matches("1234:TESTTOKEN", SPEC_BODY + b" ", SPEC_SIGNATURE)
    assert not signature_matches("1234:OTHER", SPEC_BODY, SPEC_SIGNATURE)
    assert not signature_matches("1234:TESTTOKEN", SPEC_BODY, "")
    assert not signature_matches("1234:TESTTOKEN", SPEC_BODY, "é" * 64)


def counts(app) -> dict:
    conn = app.db.connect()
    return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("invoices", "subscriptions", "outbox", "audit", "members")}


def test_it_applies_a_paid_invoice_once_and_answers_200(app, cryptopay, client):
    invoice = paid_invoice(app, cryptopay)
    body = paid_update(invoice)
    first = client.post_signed("/webhook/cryptobot", body)
    assert first.status_code == 200 and first.json() == {"ok": True}
    sub = app.db.subscription(501)
    assert sub["expires_at"] == START + 30 * 86400
    before = counts(app)
    again = client.post_signed("/webhook/cryptobot", paid_update(invoice, update_id=2))
    assert again.status_code == 200
    assert counts(app) == before
    assert app.db.subscription(501)["expires_at"] == START + 30 * 86400
    row = app.db.invoice_by_uuid(invoice["payload"])
    assert (row["status"], row["applied_by"]) == ("paid", "webhook")
    actions = [(r["action"], r["cause"]) for r in audit_rows(app.db, 501)]
    assert actions == [("payment_applied", "webhook")]
    assert [r["kind"] for r in app.db.due_messages(app.now())] == ["activated"]


def test_it_refuses_a_missing_or_wrong_signature_with_401_and_changes_nothing(app, cryptopay, client):
    invoice = paid_invoice(app, cryptopay)
    body = paid_update(invoice)
    before = counts(app)
    missing = client.post("/webhook/cryptobot", body)
    wrong = client.post_signed("/webhook/cryptobot", body, token="1234:WRONGTOKEN")
    tampered = client.post("/webhook/cryptobot", body.replace(b'"5"', b'"6"'),
                           headers={"crypto-pay-api-signature": signature(PAY_TOKEN, body)})
    for response in (missing, wrong, tampered):
        assert response.status_code == 401
        assert "error" in response.json()
    assert counts(app) == before
    assert app.db.subscription(501) is None


def test_it_answers_413_to_a_body_over_64_kib(app, server):
    body = b'{"update_type":"invoice_paid","payload":{},"pad":"' + b"x" * (64 * 1024) + b'"}'
    response = post_signed(server + "/webhook/cryptobot", body)
    assert response.status_code == 413
    assert response.json()["error"]


UNUSABLE_BODIES = (b"not json", b"[1,2]", b'{"update_type":"invoice_paid"}', b"\xff\xfe", b"[" * 5000,
                   b'{"update_type":"invoice_paid","payload":{"invoice_id":"x","status":"paid"}}',
                   b'{"update_type":"invoice_paid","payload":{"invoice_id":5,"status":"paid","asset":"USDT",'
                   b'"amount":"NaN-ish"}}')


def unusable_rows(app) -> list:
    return app.db.connect().execute("SELECT error, body FROM unusable_webhooks ORDER BY id").fetchall()


def alerts(app) -> list:
    return app.db.connect().execute("SELECT * FROM outbox WHERE kind = 'admin_webhook_unusable'").fetchall()


def test_a_signed_body_it_cannot_use_gets_200_not_400_and_is_kept_with_one_alert(app, cryptopay, client):
    """A 4xx would have CryptoBot retry it for three days and then disable the webhook."""
    invoice = paid_invoice(app, cryptopay)
    before = counts(app)
    for body in UNUSABLE_BODIES:
        response = client.post_signed("/webhook/cryptobot", body)
        assert response.status_code == 200, body
        assert response.json() == {"ok": True, "ignored": True}
    rows = unusable_rows(app)
    assert [bytes(r["body"]) for r in rows] == list(UNUSABLE_BODIES)
    assert [r["error"] for r in rows][:3] == ["body is not JSON", "body is not a Crypto Pay update",
                                              "body is not a Crypto Pay update"]
    assert rows[-1]["error"] == "bad invoice: amount is not a decimal string"
    # Nothing applied, nothing changed but the record and one alert (outbox row, audit row) per admin.
    assert app.db.subscription(501) is None
    assert app.db.invoice_by_uuid(invoice["payload"])["status"] == "pending"
    assert [(r["chat_id"], json.loads(r["payload"])["record_id"]) for r in alerts(app)] == [(ADMIN, 1)]
    assert counts(app) == {**before, "outbox": before["outbox"] + 1, "audit": before["audit"] + 1}
    assert [r["action"] for r in audit_rows(app.db)][-1] == "admin_webhook_unusable_bad"


def test_a_new_unusable_webhook_alerts_again_only_after_one_was_used(app, cryptopay, client):
    assert client.post_signed("/webhook/cryptobot", b"not json").status_code == 200
    assert client.post_signed("/webhook/cryptobot", b"[]").status_code == 200
    assert len(alerts(app)) == 1
    # One for an invoice that is not ours (as ping-webhook sends) does not count as used.
    stranger = {"invoice_id": 77, "status": "paid", "asset": "USDT", "amount": "5", "payload": "someone-else"}
    assert client.post_signed("/webhook/cryptobot", paid_update(stranger)).status_code == 200
    assert client.post_signed("/webhook/cryptobot", b"not json").status_code == 200
    assert len(alerts(app)) == 1
    assert client.post_signed("/webhook/cryptobot", paid_update(paid_invoice(app, cryptopay))).status_code == 200
    assert app.db.subscription(501) is not None
    assert client.post_signed("/webhook/cryptobot", b"not json").status_code == 200
    assert len(alerts(app)) == 2
    assert len(unusable_rows(app)) == 4


def test_an_unsigned_unusable_body_is_still_401_and_not_kept(app, client):
    for body in UNUSABLE_BODIES[:3]:
        assert client.post("/webhook/cryptobot", body).status_code == 401
        assert client.post_signed("/webhook/cryptobot", body, token="1234:WRONGTOKEN").status_code == 401
    assert unusable_rows(app) == [] and alerts(app) == []


def test_an_unusable_webhook_is_500_while_the_database_is_locked(app, client, monkeypatch):
    """Then CryptoBot retries, and the retry is kept."""
    import db as db_module

    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)
    app.db.close()
    blocker = sqlite3.connect(app.db.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert client.post_signed("/webhook/cryptobot", b"not json").status_code == 500
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert unusable_rows(app) == []
    assert client.post_signed("/webhook/cryptobot", b"not json").status_code == 200
    assert len(unusable_rows(app)) == 1 and len(alerts(app)) == 1


def test_admins_read_the_unusable_webhook_alert_in_their_language(app, telegram, client):
    from outbox import Sender

    app.db.upsert_member(ADMIN, "boss", "Boss", "ru", app.now())
    assert client.post_signed("/webhook/cryptobot", b"not json").status_code == 200
    while Sender(app).run_once():
        pass
    [message] = telegram.messages_to(ADMIN)
    assert "body is not JSON" in message["text"] and "unusable_webhooks" in message["text"]
    assert message["text"].startswith("CryptoBot прислал webhook")


def test_it_ignores_other_update_types_with_200(app, client):
    body = crypto_pay_update("check_activated", {"check_id": 1}, update_id=3)
    response = client.post_signed("/webhook/cryptobot", body)
    assert response.status_code == 200
    assert counts(app)["audit"] == 0


def test_it_answers_200_and_warns_about_an_invoice_it_never_created(app, client, caplog):
    invoice = {"invoice_id": 77, "status": "paid", "asset": "USDT", "amount": "5", "payload": "someone-else"}
    with caplog.at_level(logging.WARNING, logger="clubbot.payments"):
        response = client.post_signed("/webhook/cryptobot", paid_update(invoice))
    assert response.status_code == 200
    assert "invoice 77 is not one this database created" in caplog.text
    assert counts(app)["subscriptions"] == 0


def test_it_records_a_mismatch_alerts_admins_and_gives_no_access(app, cryptopay, client):
    for invoice in (paid_invoice(app, cryptopay, amount="4.99"),):
        response = client.post_signed("/webhook/cryptobot", paid_update(invoice))
        assert response.status_code == 200
    again = client.post_signed("/webhook/cryptobot", paid_update(invoice))
    assert again.status_code == 200
    assert app.db.subscription(501) is None
    assert app.db.invoice_by_uuid(invoice["payload"])["status"] == "mismatch"
    queued = sorted((r["kind"], r["chat_id"]) for r in app.db.due_messages(app.now()))
    assert queued == [("admin_mismatch", ADMIN), ("payment_mismatch", 501)]
    assert [r["action"] for r in audit_rows(app.db, 501)] == ["payment_mismatch"]


def test_a_wrong_asset_is_a_mismatch_too(app, cryptopay, client):
    invoice = paid_invoice(app, cryptopay, asset="TON")
    assert client.post_signed("/webhook/cryptobot", paid_update(invoice)).status_code == 200
    assert app.db.subscription(501) is None


def test_it_finds_an_invoice_by_its_payload_when_the_id_was_never_saved(app, cryptopay, client):
    """The process stopped between createInvoice and saving the invoice id."""
    app.db.upsert_member(501, "member", "Member", "en", app.now())
    plan = app.config.plan("month")
    payment_uuid = app.db.start_invoice(501, plan.id, plan.duration, plan.amount, plan.currency, False,
                                        app.now(), 3600)
    invoice = {"invoice_id": 4242, "status": "paid", "asset": "USDT", "amount": "5.00", "payload": payment_uuid}
    assert client.post_signed("/webhook/cryptobot", paid_update(invoice)).status_code == 200
    assert app.db.subscription(501)["expires_at"] == START + plan.duration
    assert app.db.invoice_by_uuid(payment_uuid)["invoice_id"] == 4242


def test_it_answers_500_while_the_database_is_locked_so_cryptobot_retries(app, cryptopay, server, monkeypatch):
    import db as db_module

    invoice = paid_invoice(app, cryptopay)
    monkeypatch.setattr(db_module, "BUSY_TIMEOUT_MS", 200)
    app.db.close()  # reconnect with the short timeout
    blocker = sqlite3.connect(app.db.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        # The server's worker threads open their own connections with the short timeout.
        response = post_signed(server + "/webhook/cryptobot", paid_update(invoice))
        assert response.status_code == 500
        assert response.json()["error"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert app.db.subscription(501) is None
    retry = post_signed(server + "/webhook/cryptobot", paid_update(invoice))
    assert retry.status_code == 200
    assert app.db.subscription(501) is not None


def test_get_on_the_webhook_is_405_with_allow_post(client):
    for method in ("GET", "HEAD", "PUT"):
        response = client.request(method, "/webhook/cryptobot")
        assert response.status_code == 405
        assert response.headers["Allow"] == "POST"


def test_a_post_to_health_is_405_with_allow_get_and_head_and_status_lines_are_the_standard_ones(server):
    response = requests.post(server + "/health", timeout=10)
    assert (response.status_code, response.reason) == (405, "Method Not Allowed")
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.json() == {"error": "use GET"}
    big = requests.post(server + "/webhook/cryptobot", data=b"x" * (70 * 1024), timeout=10,
                        headers={"crypto-pay-api-signature": "00"})
    assert (big.status_code, big.reason) == (413, "Request Entity Too Large")


def test_anything_else_is_404_in_json(client):
    response = client.get("/webhook")
    assert response.status_code == 404
    assert response.json() == {"error": "not found"}


def test_health_is_200_when_the_database_answers(client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy" and isinstance(body["timestamp"], int)
    head = client.request("HEAD", "/health")
    assert head.status_code == 200 and head.content == b""


def test_health_is_503_when_the_database_does_not_answer(app, client):
    from db import Database

    app.db = Database(app.db.path.parent / "missing-folder" / "x.db")  # cannot be opened
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy" and body["error"]


def test_the_app_is_valid_wsgi(app, cryptopay, client):
    """The `client` fixture calls the app under wsgiref's validator: each kind of answer once."""
    invoice = paid_invoice(app, cryptopay)
    body = paid_update(invoice)
    for method, path, data, headers, expected in (
        ("GET", "/health", b"", {}, "200 OK"),
        ("POST", "/webhook/cryptobot", body, {"crypto-pay-api-signature": signature(PAY_TOKEN, body)}, "200 OK"),
        ("POST", "/webhook/cryptobot", body, {}, "401 Unauthorized"),
        ("GET", "/nowhere", b"", {}, "404 Not Found"),
    ):
        response = client.request(method, path, data, headers=headers)
        assert f"{response.status_code} {response.reason}" == expected
    assert app.db.subscription(501)["expires_at"] == START + 30 * 86400


def test_a_request_that_leaves_a_write_uncommitted_fails_and_its_write_is_not_seen(app):
    """The `client` fixture itself: each request on its own connection, closed at its end, so the
    test's reads see only what the request committed."""
    def forgets_to_commit(environ, start_response):
        conn = app.db.connect()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO state (key, value) VALUES ('probe', 'written')")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b""]

    with pytest.raises(AssertionError, match="transaction left open"):
        InProcess(forgets_to_commit, app).get("/")
    assert app.db.states("probe") == {}


def test_it_logs_the_client_address_behind_the_trusted_proxy(app, cryptopay, server, caplog):
    invoice = paid_invoice(app, cryptopay)
    with caplog.at_level(logging.INFO, logger="clubbot.http"):
        response = requests.post(server + "/webhook/cryptobot", data=paid_update(invoice), timeout=10, headers={
            "crypto-pay-api-signature": signature(PAY_TOKEN, paid_update(invoice)),
            "X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert "webhook received from 203.0.113.7" in caplog.text


def test_it_never_logs_a_whole_signature(app, cryptopay, client, caplog):
    invoice = paid_invoice(app, cryptopay)
    body = paid_update(invoice)
    bad = signature("1234:WRONGTOKEN", body)
    with caplog.at_level(logging.DEBUG):
        client.post("/webhook/cryptobot", body,
                    headers={"crypto-pay-api-signature": bad})
    assert bad[:8] in caplog.text
    assert bad not in caplog.text


def test_many_threads_delivering_the_same_invoice_apply_it_once(app, cryptopay, server):
    invoice = paid_invoice(app, cryptopay)
    body = paid_update(invoice)
    barrier = threading.Barrier(20)
    statuses = []

    def deliver():
        barrier.wait()
        statuses.append(post_signed(server + "/webhook/cryptobot", body).status_code)

    threads = [threading.Thread(target=deliver) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 20
    assert app.db.subscription(501)["expires_at"] == START + 30 * 86400
    assert len(audit_rows(app.db, 501)) == 1
    assert counts(app)["outbox"] == 1
    assert Decimal(app.db.invoice_by_uuid(invoice["payload"])["amount"]) == Decimal("5")


def test_a_signed_body_nested_too_deep_is_kept_without_parsing_it(app, client):
    deep = b'{"update_type":"invoice_paid","payload":' + b"[" * 40 + b'"[{not brackets}]"' + b"]" * 40 + b"}"
    shallow = b"[" * 30 + b"]" * 30
    for body in (deep, shallow, b"[" * 60000):
        assert client.post_signed("/webhook/cryptobot", body).status_code == 200
    assert [r["error"] for r in unusable_rows(app)] == [
        "body is nested deeper than 32", "body is not a Crypto Pay update", "body is nested deeper than 32"]
