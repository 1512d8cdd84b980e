"""The real processes: `python clubbot.py`, `clubbot.py bot`, `webhook_server.py`, against the fakes."""
import signal
import sqlite3
import threading
import time

import pytest
import requests
from builders import callback_query, message, paid_invoice, paid_update, pending_invoice
from conftest import BOT_TOKEN, PAY_TOKEN, ROOT, post_signed, start_process, wait_for, wait_for_port

CLUBBOT = str(ROOT / "clubbot.py")
WEBHOOK_SERVER = str(ROOT / "webhook_server.py")


def stop(process, sig=signal.SIGTERM, timeout=10) -> tuple[int, float, str]:
    """Send `sig`; return the exit code, the seconds it took, and what it wrote on stderr."""
    started = time.monotonic()
    process.send_signal(sig)
    try:
        _, err = process.communicate(timeout=timeout + 5)
    except subprocess_timeout():
        process.kill()
        raise
    return process.returncode, time.monotonic() - started, err


def subprocess_timeout():
    import subprocess

    return subprocess.TimeoutExpired


def health(port):
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_the_all_in_one_process_sells_a_subscription_end_to_end(tmp_path, env, telegram, cryptopay):
    process = start_process([CLUBBOT], env, tmp_path)
    try:
        port = int(env["WEBHOOK_PORT"])
        wait_for(lambda: health(port), timeout=15)
        telegram.push_update(message("/start"))
        greeting = wait_for(lambda: telegram.messages_to(501))
        assert "Welcome" in greeting[0]["text"]
        telegram.push_update(callback_query("plan:month"))
        wait_for(lambda: cryptopay.called("createInvoice"))
        wait_for(lambda: len(telegram.messages_to(501)) == 2)
        invoice = cryptopay.pay(1001)
        response = post_signed(f"http://127.0.0.1:{port}/webhook/cryptobot", paid_update(invoice))
        assert response.status_code == 200
        activated = wait_for(lambda: [m for m in telegram.messages_to(501) if "active until" in m["text"]])
        assert len(activated) == 1
        code, seconds, err = stop(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0 and seconds < 10, err
    log = (tmp_path / "logs" / "clubbot.log").read_text()
    for event in ("webhook received from 127.0.0.1", "signature check passed", "payment processed",
                  "subscription activated", "ClubBot stopped"):
        assert event in log, event
    for secret in (BOT_TOKEN, BOT_TOKEN.split(":")[1], PAY_TOKEN):
        assert secret not in log and secret not in err


def test_without_a_webhook_a_payment_is_seen_within_seconds_by_polling(tmp_path, env, telegram, cryptopay):
    """Selling before the domain exists: no WEBHOOK_URL and POLL_INTERVAL at its default (30 s),
    yet the member paying waits seconds, not half a minute."""
    env = {key: value for key, value in env.items() if key not in ("WEBHOOK_URL", "POLL_INTERVAL")}
    process = start_process([CLUBBOT], env, tmp_path)
    try:
        wait_for(lambda: health(int(env["WEBHOOK_PORT"])), timeout=15)
        telegram.push_update(message("/start"))
        wait_for(lambda: telegram.messages_to(501))
        telegram.push_update(callback_query("plan:month"))
        wait_for(lambda: len(telegram.messages_to(501)) == 2)
        polls = len(cryptopay.called("getInvoices"))
        cryptopay.pay(1001)
        paid_at = time.monotonic()
        wait_for(lambda: [m for m in telegram.messages_to(501) if "active until" in m["text"]], timeout=15)
        assert time.monotonic() - paid_at < 6  # POLL_WITHOUT_WEBHOOK (3 s) and the send
        assert len(cryptopay.called("getInvoices")) > polls
        stop(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert "polling is how payments are seen" in (tmp_path / "logs" / "clubbot.log").read_text()


@pytest.mark.parametrize("args", [[CLUBBOT], [CLUBBOT, "bot"], [WEBHOOK_SERVER]],
                         ids=["all-in-one", "bot", "webhook-server"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_each_process_stops_cleanly_within_10_seconds(tmp_path, env, args, sig, telegram):
    process = start_process(args, env, tmp_path)
    try:
        if args[-1] == "bot":
            wait_for(lambda: telegram.called("getUpdates"), timeout=15)
        else:
            wait_for(lambda: health(int(env["WEBHOOK_PORT"])), timeout=15)
        code, seconds, err = stop(process, sig)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, err
    assert seconds < 6  # SPEC allows 10 s; normally about 1 s, so a slip shows here first
    assert "ClubBot stopped" in err
    if args == [WEBHOOK_SERVER]:
        assert telegram.calls == []  # the webhook server never needs Telegram


def test_the_split_setup_records_in_one_process_and_sends_from_the_other(tmp_path, env, telegram, cryptopay,
                                                                        app):
    bot = start_process([CLUBBOT, "bot"], env, tmp_path)
    server = start_process([WEBHOOK_SERVER], env, tmp_path)
    try:
        port = int(env["WEBHOOK_PORT"])
        wait_for(lambda: health(port), timeout=15)
        wait_for(lambda: telegram.called("getUpdates"), timeout=15)
        invoice = paid_invoice(app, cryptopay)
        assert post_signed(f"http://127.0.0.1:{port}/webhook/cryptobot", paid_update(invoice)).status_code == 200
        wait_for(lambda: [m for m in telegram.messages_to(501) if "active until" in m["text"]], timeout=15)
        assert stop(server)[0] == 0
        assert stop(bot)[0] == 0
    finally:
        for process in (bot, server):
            if process.poll() is None:
                process.kill()


def test_twenty_threads_and_a_second_process_apply_one_payment_once(tmp_path, env, app, cryptopay, server):
    other = start_process([WEBHOOK_SERVER], env, tmp_path)
    try:
        port = int(env["WEBHOOK_PORT"])
        wait_for_port(port)
        body = paid_update(paid_invoice(app, cryptopay))
        targets = [f"{server}/webhook/cryptobot"] * 20 + [f"http://127.0.0.1:{port}/webhook/cryptobot"] * 20
        barrier = threading.Barrier(len(targets))
        statuses = []

        def deliver(url):
            barrier.wait()
            statuses.append(post_signed(url, body).status_code)

        threads = [threading.Thread(target=deliver, args=(url,)) for url in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert stop(other)[0] == 0
    finally:
        if other.poll() is None:
            other.kill()
    assert statuses == [200] * 40
    conn = sqlite3.connect(app.db.path)
    # The two processes have different clocks; whichever applied it, it added 30 days once.
    [(applied_at,)] = conn.execute("SELECT at FROM audit WHERE action = 'payment_applied'").fetchall()
    assert conn.execute("SELECT expires_at FROM subscriptions WHERE user_id = 501").fetchall() == [
        (applied_at + 30 * 86400,)]
    assert conn.execute("SELECT count(*) FROM outbox WHERE kind = 'activated'").fetchone() == (1,)


def test_a_message_committed_when_the_process_is_killed_is_sent_after_restart(tmp_path, env, telegram,
                                                                              cryptopay, app):
    paid_invoice(app, cryptopay)  # paid while ClubBot is down; no webhook ever comes
    telegram.hang.add("sendMessage")
    first = start_process([CLUBBOT, "bot"], env, tmp_path)
    try:
        wait_for(lambda: telegram.called("sendMessage"), timeout=15)  # committed, and the send in flight
        first.kill()
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    conn = sqlite3.connect(app.db.path)
    assert conn.execute("SELECT status FROM outbox WHERE kind = 'activated'").fetchall() == [("pending",)]
    assert telegram.messages_to(501) == []
    telegram.hang.discard("sendMessage")
    second = start_process([CLUBBOT, "bot"], env, tmp_path)
    try:
        wait_for(lambda: telegram.messages_to(501), timeout=15)
        wait_for(lambda: conn.execute("SELECT status FROM outbox WHERE kind = 'activated'").fetchall() == [("sent",)])
        assert stop(second)[0] == 0
    finally:
        if second.poll() is None:
            second.kill()
    [message] = telegram.messages_to(501)
    assert "active until" in message["text"]
    assert conn.execute("SELECT status FROM outbox WHERE kind = 'activated'").fetchall() == [("sent",)]
    assert conn.execute("SELECT count(*) FROM audit WHERE action = 'payment_applied'").fetchone() == (1,)


def test_a_handled_update_is_confirmed_and_not_handled_again_after_a_restart(tmp_path, env, telegram):
    for run in range(2):
        process = start_process([CLUBBOT, "bot"], env, tmp_path)
        try:
            wait_for(lambda: telegram.called("getUpdates"), timeout=15)
            if not telegram.messages_to(501):
                telegram.push_update(message("/status"))
                wait_for(lambda: telegram.messages_to(501))
            # Rather than a pause: an update sent after it is answered and confirmed, so the one
            # before was confirmed too, and after the restart would have been answered again by now.
            later = telegram.push_update(message("/help", 600 + run))
            wait_for(lambda chat=600 + run, later=later: telegram.messages_to(chat)
                     and telegram.confirmed >= later["update_id"])
            assert stop(process)[0] == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert telegram.confirmed >= 1
    assert len(telegram.messages_to(501)) == 1


def test_a_database_that_cannot_be_opened_is_one_line_and_exit_1(tmp_path, env):
    blocker = tmp_path / "file"
    blocker.write_text("")
    process = start_process([WEBHOOK_SERVER], {**env, "DATABASE_PATH": str(blocker / "db.sqlite")}, tmp_path)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 1
    assert "cannot open the database" in err and "Traceback" not in err


def test_sigterm_during_start_up_with_telegram_hanging_still_stops_at_once(tmp_path, env, telegram):
    telegram.hang.update({"getMe", "getChat"})
    process = start_process([CLUBBOT], env, tmp_path)
    try:
        wait_for(lambda: telegram.called("getMe"), timeout=15)
        code, seconds, err = stop(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, err
    assert seconds < 6


def test_requests_in_flight_or_queued_at_sigterm_are_answered_before_exit(tmp_path, env, app, cryptopay):
    """The webhooks wait on a database lock when SIGTERM comes: 4 in waitress's threads,
    3 in its queue. Each still gets its answer, and its payment is applied."""
    bodies, uuids = [], []
    for user in range(501, 508):
        row = pending_invoice(app, user)
        uuids.append(row["payment_uuid"])
        bodies.append(paid_update(cryptopay.pay(row["invoice_id"])))
    server = start_process([WEBHOOK_SERVER], env, tmp_path)
    port = int(env["WEBHOOK_PORT"])
    answers = []
    try:
        wait_for(lambda: health(port), timeout=15)
        blocker = sqlite3.connect(app.db.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the webhooks' transactions must wait for this one
        requests_ = [threading.Thread(target=lambda body=body: answers.append(
            post_signed(f"http://127.0.0.1:{port}/webhook/cryptobot", body).status_code)) for body in bodies]
        for request in requests_:
            request.start()
        # Pauses that are the point, as nothing outside the process shows where a request is:
        time.sleep(0.5)  # the requests arrive: 4 in waitress's threads, 3 in its queue
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the stop begins while they still wait on the lock
        blocker.execute("COMMIT")
        for request in requests_:
            request.join(20)
        code = server.wait(15)
    finally:
        if server.poll() is None:
            server.kill()
    assert sorted(answers) == [200] * 7
    assert code == 0
    assert [app.db.invoice_by_uuid(u)["status"] for u in uuids] == ["paid"] * 7
