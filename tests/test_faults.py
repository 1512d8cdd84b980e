"""Faults: kills at random points, outages of Crypto Pay and Telegram, a full or read-only disk."""
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
from builders import message, paid_invoice, paid_update, pending_invoice
from conftest import ROOT, START, post_signed, start_process, wait_for

from cryptopay import CryptoPayError
from outbox import Sender
from payments import buy
from updates import UpdatePoller
from workers import Poller

CLUBBOT = str(ROOT / "clubbot.py")
MONTH, YEAR = 30 * 86400, 365 * 86400


def seed_stream(db_path, cryptopay, members: int, invoices: int, rng: random.Random) -> dict[int, dict]:
    """Members with pending invoices (known to the fake Crypto Pay, already paid there)."""
    from db import Database

    database = Database(db_path)
    database.migrate()
    now = int(time.time())
    seeded: dict[int, dict] = {}
    with database.transaction() as tx:
        for user in range(members):
            tx.execute("INSERT INTO members (user_id, uuid, language, created_at) VALUES (?, ?, 'en', ?)",
                       (10_000 + user, str(uuid.uuid4()), now))
        for _ in range(invoices):
            user = 10_000 + rng.randrange(members)
            plan, duration, amount = rng.choice([("month", MONTH, "5"), ("year", YEAR, "50")])
            invoice_id = next(cryptopay.invoice_ids)
            payment_uuid = str(uuid.uuid4())
            tx.execute("INSERT INTO invoices (payment_uuid, invoice_id, user_id, plan_id, duration, amount, "
                       "currency, currency_type, status, created_at, expires_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, 'USDT', 'crypto', 'pending', ?, ?)",
                       (payment_uuid, invoice_id, user, plan, duration, amount, now, now + 3600))
            invoice = {"invoice_id": invoice_id, "status": "active", "asset": "USDT", "amount": amount,
                       "currency_type": "crypto", "payload": payment_uuid}
            cryptopay.add_invoice(invoice)
            seeded[invoice_id] = {"user": user, "duration": duration, "invoice": invoice}
    database.close()
    return seeded


@pytest.mark.slow
def test_kills_at_random_points_lose_nothing_and_apply_nothing_twice(tmp_path, env, telegram, cryptopay):
    """1,000 deliveries with duplicates, SIGKILL at random moments, a restart after each."""
    rng = random.Random(20261128)
    seeded = seed_stream(tmp_path / "data" / "clubbot.db", cryptopay, members=300, invoices=1000, rng=rng)
    deliveries = [invoice_id for invoice_id in seeded for _ in range(rng.choice([1, 1, 2, 3]))]
    rng.shuffle(deliveries)
    for invoice_id in list(seeded)[::2]:  # half are paid at Crypto Pay too: the poller races the webhooks
        cryptopay.pay(invoice_id)
    url = f"http://127.0.0.1:{env['WEBHOOK_PORT']}/webhook/cryptobot"
    bodies = {i: paid_update({**seeded[i]["invoice"], "status": "paid"}) for i in seeded}
    done = threading.Event()
    delivered = []

    def cryptobot():
        """Delivers each update until it is answered 200, as CryptoBot does."""
        for invoice_id in deliveries:
            while True:
                try:
                    if post_signed(url, bodies[invoice_id]).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.02)  # CryptoBot's next try (a pace, not a wait for something)
            delivered.append(invoice_id)
            time.sleep(0.003)  # the stream's pace
        done.set()

    sender = threading.Thread(target=cryptobot, daemon=True)
    kills = 0
    process = start_process([CLUBBOT], {**env, "POLL_INTERVAL": "1s"}, tmp_path)
    sender.start()
    try:
        while not done.is_set():
            time.sleep(rng.uniform(0.3, 1.2))  # the point: a kill at a random moment of the stream
            if done.is_set():
                break
            process.kill()
            process.wait(10)
            kills += 1
            process = start_process([CLUBBOT], {**env, "POLL_INTERVAL": "1s"}, tmp_path)
        conn = sqlite3.connect(tmp_path / "data" / "clubbot.db")
        wait_for(lambda: conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0] == 0,
                 timeout=60, step=0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert kills >= 3, "the stream ended before enough kills"
    assert len(delivered) == len(deliveries)
    applied = dict(conn.execute("SELECT invoice_id, count(*) FROM audit WHERE action = 'payment_applied' "
                                "GROUP BY invoice_id").fetchall())
    assert applied == {invoice_id: 1 for invoice_id in seeded}  # every paid invoice, exactly once
    # The member's time starts with the payment committed first (the lowest audit id).
    first = dict(conn.execute("SELECT a.user_id, a.at FROM audit a JOIN (SELECT user_id, min(id) AS id FROM audit "
                              "WHERE action = 'payment_applied' GROUP BY user_id) f ON f.id = a.id").fetchall())
    owed: dict[int, int] = {}
    for item in seeded.values():
        owed[item["user"]] = owed.get(item["user"], 0) + item["duration"]
    expiries = dict(conn.execute("SELECT user_id, expires_at FROM subscriptions").fetchall())
    assert expiries == {user: first[user] + owed[user] for user in owed}  # the exact sum of the plans
    rows = conn.execute("SELECT status, count(*) FROM outbox WHERE kind = 'activated' GROUP BY status").fetchall()
    assert rows == [("sent", len(seeded))]
    told = [m for m in telegram.sent if "active until" in m.get("text", "")]
    # Telegram has no idempotency key: a kill while a message is in flight may repeat that
    # message (at most one per sender lane per kill); none is ever lost.
    assert len(seeded) <= len(told) <= len(seeded) + 4 * kills
    print(f"{kills} kills; {len(told) - len(seeded)} message(s) repeated")


def test_crypto_pay_down_for_minutes_then_back(app, cryptopay, clock, monkeypatch):
    paid_invoice(app, cryptopay)
    outage = (502, b"<html>502 Bad Gateway</html>")
    cryptopay.fail("getInvoices", *[outage] * 8)
    cryptopay.fail("createInvoice", outage)
    app.db.upsert_member(502, "n", "N", "en", app.now())
    with pytest.raises(CryptoPayError):  # a member buying meanwhile: a clear error, no invoice left
        buy(app, 502, app.config.plan("month"), "month")
    waited = []

    def wait(delay=None):
        waited.append(delay)
        clock.advance(delay or 0)
        if app.db.expires_at(501) or len(waited) > 20:
            app.stop.set()
        return app.stop.is_set()

    monkeypatch.setattr(app.stop, "wait", wait)
    Poller(app).run()
    assert app.db.expires_at(501) is not None  # found as soon as Crypto Pay answered again
    assert sum(waited) >= 5 * 60  # it was down for minutes, and the poller backed off meanwhile
    assert max(waited) <= 300
    assert app.db.pending_invoice_ids() == []


def test_telegram_502_on_get_updates_is_waited_out(app, telegram):
    from handlers import register_handlers

    register_handlers(app.bot, app)
    telegram.fail("getUpdates", *[(502, b"bad gateway")] * 3)
    telegram.push_update(message("/status"))
    app.stop.wait = lambda delay=None: app.stop.is_set()  # no real back-off sleeps in the test
    poller = UpdatePoller(app)
    thread = threading.Thread(target=poller.run, daemon=True)
    thread.start()
    wait_for(lambda: telegram.messages_to(501), timeout=10)
    app.stop.set()  # the thread ends after its current long poll
    assert len(telegram.called("getUpdates")) >= 4


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs of our own, to fill up."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder) -> None:
    with open(folder / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass


def disk_app(make_config, clock, folder):
    from runtime import build_app
    from tg import RateLimiter, make_bot

    app = build_app(make_config(DATABASE_PATH=str(folder / "clubbot.db")), clock=clock)
    app.bot = make_bot(app.config.bot_token, app.config.telegram_api_url)
    app.limiter = RateLimiter(1000, monotonic=clock.monotonic, sleep=clock.sleep)
    return app


def serve(app):
    from webhook_server import ServerThread, create_server

    server = create_server(app, host="127.0.0.1", port=0)  # any free port: no race for one
    return ServerThread(server).start(), f"http://127.0.0.1:{server.effective_port}"


def test_a_full_disk_answers_500_loses_nothing_and_recovers(small_disk, make_config, clock, cryptopay):
    app = disk_app(make_config, clock, small_disk)
    row = pending_invoice(app, 501)
    body = paid_update(cryptopay.pay(row["invoice_id"]))
    thread, url = serve(app)
    try:
        fill(small_disk)
        assert post_signed(url + "/webhook/cryptobot", body).status_code == 500
        assert app.db.invoice_by_uuid(row["payment_uuid"])["status"] == "pending"
        (small_disk / "filler").unlink()
        assert post_signed(url + "/webhook/cryptobot", body).status_code == 200
        assert app.db.invoice_by_uuid(row["payment_uuid"])["status"] == "paid"
        assert app.db.expires_at(501) == START + MONTH
    finally:
        thread.stop(2)


def test_sender_lanes_keep_every_message_once_and_in_order_per_chat(app, telegram):
    for user in range(200):
        for n in range(3):
            app.db.enqueue("text", 1000 + user, {"text": f"{n}"}, app.now())
    sender = Sender(app, lanes=4)
    while sender.run_once():
        pass
    for user in range(200):
        assert [m["text"] for m in telegram.messages_to(1000 + user)] == ["0", "1", "2"]
    assert len(telegram.sent) == 600


def expired_member(app, user_id=501) -> None:
    """A member whose time ran out a moment ago, by the real clock the processes use."""
    from db import extend_subscription

    now = int(time.time())
    app.db.upsert_member(user_id, f"m{user_id}", "Member", "en", now)
    with app.db.transaction() as tx:
        extend_subscription(tx, user_id, 60, now - 70)


def run_bot_until(tmp_path, env, condition, timeout=20):
    """Start `clubbot.py bot`, wait for `condition`, stop it with SIGTERM."""
    process = start_process([CLUBBOT, "bot"], env, tmp_path)
    try:
        try:
            wait_for(condition, timeout=timeout)
        finally:
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
    except AssertionError:
        print(err if "err" in locals() else "")
        raise
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("renews", [False, True], ids=["no renewal", "renewed meanwhile"])
def test_a_kill_between_ban_and_unban_is_followed_by_the_unban(tmp_path, env, app, telegram, renews):
    from conftest import CLUB_CHAT

    expired_member(app)
    # Banned; the unban is in flight when the kill comes, and Telegram never carries it out.
    telegram.fail("unbanChatMember", (502, b"bad gateway"))
    telegram.hang.add("unbanChatMember")
    first = start_process([CLUBBOT, "bot"], env, tmp_path)
    try:
        wait_for(lambda: telegram.called("unbanChatMember"), timeout=20)
        first.kill()
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert (CLUB_CHAT, 501) in telegram.banned
    if renews:
        result = subprocess.run([sys.executable, CLUBBOT, "grant", "501", "30d"], cwd=tmp_path,
                                env={"PATH": os.environ.get("PATH", ""), **env}, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    telegram.hang.discard("unbanChatMember")
    telegram.released.set()
    expected = "active until" if renews else "has ended"
    run_bot_until(tmp_path, env, lambda: any(expected in m.get("text", "") for m in telegram.messages_to(501)))
    assert (CLUB_CHAT, 501) not in telegram.banned  # free to come back, or in
    conn = sqlite3.connect(app.db.path)
    assert conn.execute("SELECT count(*) FROM bans").fetchone() == (0,)
    if not renews:
        assert telegram.removed == [(CLUB_CHAT, 501)]


def test_a_kill_after_a_grant_committed_and_before_its_update_was_confirmed_grants_once(tmp_path, env, app,
                                                                                         telegram):
    from conftest import ADMIN

    telegram.hang.add("sendMessage")  # the admin's "Done" is in flight when the kill comes
    telegram.push_update(message("/grant 501 30d", ADMIN))
    first = start_process([CLUBBOT, "bot"], env, tmp_path)
    conn = sqlite3.connect(app.db.path)
    try:
        wait_for(lambda: any(int(p["chat_id"]) == ADMIN for p in telegram.called("sendMessage")), timeout=20)
        first.kill()
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    [(granted_until,)] = conn.execute("SELECT expires_at FROM subscriptions WHERE user_id = 501").fetchall()
    assert conn.execute("SELECT status FROM updates").fetchall() == [("pending",)]
    telegram.hang.discard("sendMessage")
    telegram.released.set()
    # The reply in flight at the kill is answered too, to no one; after the restart, a second.
    run_bot_until(tmp_path, env, lambda: len(telegram.messages_to(ADMIN)) == 2)
    assert conn.execute("SELECT expires_at FROM subscriptions WHERE user_id = 501").fetchall() == [(granted_until,)]
    assert conn.execute("SELECT count(*) FROM audit WHERE action = 'granted'").fetchone() == (1,)
    assert conn.execute("SELECT status FROM updates").fetchall() == [("done",)]
