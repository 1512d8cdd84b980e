"""ClubBot's benchmarks: `python bench/run.py` prints a table, then one JSON line.

Sections (all on this machine, against local fakes; nothing leaves it):
  webhook   activations, duplicates and /health through the real server at 1, 8 and 32
            keep-alive clients, beside a bare waitress app as the ceiling
  fallback  a payment whose webhook never comes, to activation; Crypto Pay calls per poll
  sweep     10,000 expiries against a fake Bot API that enforces a rate limit
  flood     activations of other members while one member floods the bot with commands
  size      idle memory, start-up time, /stats, with an empty and a large database

`python bench/run.py webhook size` runs some of them.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

from common import BOT_TOKEN, PAY_TOKEN, ROOT, base_env, free_port, load, rss_mb, start, stop, wait_for_port

from cryptopay import signature
from db import Database

CLIENTS = (1, 8, 32)
REQUESTS_PER_LEVEL = 3000
RESULTS: dict = {}
ROWS: list[tuple[str, str, str]] = []


def row(name: str, value: str, target: str = "") -> None:
    ROWS.append((name, value, target))
    print(f"  {name:<58} {value:>22}  {target}", flush=True)


# --- webhook ---

def speed(result: dict) -> str:
    return f"{result['rps']:7.0f}/s p99 {result['p99_ms']:5.1f} ms"


def paid_body(invoice_id: int, payment_uuid: str) -> bytes:
    return json.dumps({"update_id": invoice_id, "update_type": "invoice_paid",
                       "request_date": "2026-01-01T00:00:00.000Z",
                       "payload": {"invoice_id": invoice_id, "status": "paid", "asset": "USDT", "amount": "5",
                                   "currency_type": "crypto", "payload": payment_uuid,
                                   "paid_at": "2026-01-01T00:00:00.000Z"}}).encode()


def seed_invoices(database: Database, count: int, first_id: int) -> list[tuple[int, str]]:
    now = int(time.time())
    invoices = [(first_id + n, str(uuid.uuid4())) for n in range(count)]
    with database.transaction() as tx:
        tx.executemany("INSERT INTO members (user_id, uuid, created_at) VALUES (?, ?, ?)",
                       [(invoice_id, str(uuid.uuid4()), now) for invoice_id, _ in invoices])
        tx.executemany(
            "INSERT INTO invoices (payment_uuid, invoice_id, user_id, plan_id, duration, amount, currency, "
            "currency_type, status, created_at, expires_at) VALUES (?, ?, ?, 'month', 2592000, '5', 'USDT', "
            "'crypto', 'pending', ?, ?)",
            [(payment_uuid, invoice_id, invoice_id, now, now + 3600) for invoice_id, payment_uuid in invoices])
    return invoices


def signed(body: bytes) -> tuple[str, str, bytes, dict]:
    return ("POST", "/webhook/cryptobot", body, {
        "Content-Type": "application/json", "crypto-pay-api-signature": signature(PAY_TOKEN, body)})


def bench_webhook(folder: Path) -> None:
    print("webhook (real server process, keep-alive clients)")
    port, bare_port = free_port(), free_port()
    env = base_env(folder, "http://127.0.0.1:9", "http://127.0.0.1:9", port)
    database = Database(folder / "clubbot.db")
    database.migrate()
    server = start([str(ROOT / "webhook_server.py")], env, folder)
    bare = start([str(ROOT / "bench" / "bare_app.py"), str(bare_port)], env, folder)
    results: dict = {}
    try:
        wait_for_port(port)
        wait_for_port(bare_port)
        next_id = 1_000_000
        for clients in CLIENTS:
            invoices = seed_invoices(database, REQUESTS_PER_LEVEL, next_id)
            next_id += REQUESTS_PER_LEVEL
            requests = [signed(paid_body(i, u)) for i, u in invoices]
            ceiling = load(bare_port, requests, clients)
            activations = load(port, requests, clients)
            applied = database.connect().execute(
                "SELECT count(*) FROM invoices WHERE status = 'paid' AND invoice_id BETWEEN ? AND ?",
                (invoices[0][0], invoices[-1][0])).fetchone()[0]
            duplicates = load(port, [signed(paid_body(*invoices[0]))] * REQUESTS_PER_LEVEL, clients)
            health = load(port, [("GET", "/health", b"", {})] * REQUESTS_PER_LEVEL, clients)
            lost = REQUESTS_PER_LEVEL - applied
            results[clients] = {"ceiling": ceiling, "activations": activations, "duplicates": duplicates,
                                "health": health, "lost": lost}
            ratio = activations["rps"] / ceiling["rps"]
            row(f"{clients:>2} clients: bare waitress ceiling", speed(ceiling))
            row(f"{clients:>2} clients: activations", speed(activations),
                ">= 50% of ceiling and 1000/s at 8; p99 < 50 ms" if clients == 8 else "")
            row(f"{clients:>2} clients: activations / ceiling", f"{ratio:7.0%}")
            row(f"{clients:>2} clients: activations lost", f"{lost}", "0")
            row(f"{clients:>2} clients: duplicate deliveries", speed(duplicates))
            row(f"{clients:>2} clients: /health", speed(health))
    finally:
        stop(server)
        stop(bare)
    RESULTS["webhook"] = {str(k): {name: (v if name == "lost" else {
        "rps": round(v["rps"]), "p50_ms": round(v["p50_ms"], 2), "p99_ms": round(v["p99_ms"], 2)})
        for name, v in r.items()} for k, r in results.items()}


# --- fallback ---

def bench_fallback(folder: Path) -> None:
    from fakes import FakeCryptoPay, FakeTelegram
    from tg_helpers import insert_pending

    print("fallback (webhook never sent; the poller finds the payment)")
    interval = 2
    telegram, cryptopay = FakeTelegram(BOT_TOKEN), FakeCryptoPay(PAY_TOKEN)
    env = base_env(folder, telegram.url, cryptopay.api_url, free_port(), POLL_INTERVAL=f"{interval}s")
    database = Database(folder / "clubbot.db")
    database.migrate()
    bot = start([str(ROOT / "clubbot.py"), "bot"], env, folder)
    delays = []
    try:
        while not telegram.called("getUpdates"):
            time.sleep(0.05)
        for trial in range(5):
            invoice_id = insert_pending(database, cryptopay, 500 + trial)
            time.sleep(0.37 * (trial + 1) % interval)  # pay at different points of the poll cycle
            cryptopay.pay(invoice_id)
            paid_at = time.monotonic()
            while database.connect().execute("SELECT status FROM invoices WHERE invoice_id = ?",
                                             (invoice_id,)).fetchone()[0] != "paid":
                time.sleep(0.01)
            delays.append(time.monotonic() - paid_at)
    finally:
        stop(bot)
    row(f"payment to activation, POLL_INTERVAL={interval}s (worst of 5)", f"{max(delays):.2f} s",
        f"<= {interval + 1} s")
    calls = {}
    import config as config_module
    from payments import poll_once
    from runtime import build_app

    app = build_app(config_module.load(env | {"DATABASE_PATH": str(folder / "calls.db")}, env_file=None))
    made = 0
    for pending in (0, 10, 5000):
        while made < pending:
            insert_pending(app.db, cryptopay, 10_000 + made)
            made += 1
        before = len(cryptopay.called("getInvoices"))
        poll_once(app)
        calls[pending] = len(cryptopay.called("getInvoices")) - before
        row(f"Crypto Pay calls for one poll, {pending} pending", str(calls[pending]),
            {0: "0", 10: "1", 5000: "5"}[pending])
    telegram.close()
    cryptopay.close()
    RESULTS["fallback"] = {"interval_s": interval, "worst_delay_s": round(max(delays), 3),
                           "calls_per_poll": {str(k): v for k, v in calls.items()}}


# --- sweep ---

def bench_sweep(folder: Path) -> None:
    from fakes import FakeCryptoPay, FakeTelegram

    # Telegram allows about 30 calls a second and ClubBot's default budget is 25; scaled up 16x.
    members, limit, rate = 10_000, 480, 400
    print(f"sweep ({members} expiries at once; fake Bot API allows {limit} calls/s, TELEGRAM_RATE={rate})")
    telegram, cryptopay = FakeTelegram(BOT_TOKEN), FakeCryptoPay(PAY_TOKEN)
    telegram.rate_limit = limit
    env = base_env(folder, telegram.url, cryptopay.api_url, free_port(), TELEGRAM_RATE=str(rate),
                   SWEEP_INTERVAL="1s", REMIND_BEFORE="")
    database = Database(folder / "clubbot.db")
    database.migrate()
    now = int(time.time())
    users = range(100_000, 100_000 + members)
    with database.transaction() as tx:
        tx.executemany("INSERT INTO members (user_id, uuid, language, created_at) VALUES (?, ?, 'en', ?)",
                       [(user, str(uuid.uuid4()), now) for user in users])
        tx.executemany("INSERT INTO subscriptions (user_id, expires_at, period_start, updated_at) "
                       "VALUES (?, ?, ?, ?)", [(user, now - 1, now - 86400, now - 86400) for user in users])
    started = time.monotonic()
    bot = start([str(ROOT / "clubbot.py"), "bot"], env, folder)
    try:
        deadline = started + 600
        while time.monotonic() < deadline:
            if len(telegram.removed) >= members and len(telegram.sent) >= members:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
    finally:
        stop(bot)
    removed = {user for _, user in telegram.removed}
    calls = sum(1 for name, _ in telegram.calls if name != "getUpdates")
    bound = calls / rate
    lost = members - len(removed)
    row("time to remove all and tell them", f"{elapsed:.1f} s", f"<= 1.2 x {bound:.1f} s (the rate's bound)")
    row("Bot API calls", str(calls))
    row("answered 429", str(telegram.too_many))
    row("removals lost", str(lost), "0")
    row("removals repeated", str(len(telegram.removed) - len(removed)))
    telegram.close()
    cryptopay.close()
    RESULTS["sweep"] = {"members": members, "limit": limit, "rate": rate, "seconds": round(elapsed, 1), "calls": calls,
                        "bound_s": round(bound, 1), "too_many": telegram.too_many, "lost": lost}


# --- flood ---

def flood_updates(user_id: int, count: int) -> list[dict]:
    person = {"id": user_id, "is_bot": False, "first_name": "Flood", "language_code": "en"}
    return [{"message": {"message_id": n, "date": int(time.time()), "chat": {"id": user_id, "type": "private"},
                         "from": person, "text": text,
                         "entities": [{"type": "bot_command", "offset": 0, "length": len(text)}]}}
            for n, text in enumerate(["/link", "/help", "/status"] * (count // 3))]


def activation_latencies(folder: Path, flood: int) -> tuple[list[float], int, int]:
    """Activations of 40 members, 5 a second, while one member sends `flood` commands;
    seconds from each webhook's 200 to its "active until" message reaching Telegram."""
    import threading

    import requests
    from fakes import FakeCryptoPay, FakeTelegram
    from tg_helpers import insert_pending

    telegram, cryptopay = FakeTelegram(BOT_TOKEN), FakeCryptoPay(PAY_TOKEN)
    port = free_port()
    env = base_env(folder, telegram.url, cryptopay.api_url, port)
    database = Database(folder / "clubbot.db")
    database.migrate()
    flooder = 700
    with database.transaction() as tx:  # the flooder has time left: every /link asks for the way in
        tx.execute("INSERT INTO members (user_id, uuid, language, created_at) VALUES (?, ?, 'en', ?)",
                   (flooder, str(uuid.uuid4()), int(time.time())))
        tx.execute("INSERT INTO subscriptions (user_id, expires_at, period_start, updated_at) VALUES (?, ?, ?, ?)",
                   (flooder, int(time.time()) + 86400, int(time.time()), int(time.time())))
    members = {1000 + n: insert_pending(database, cryptopay, 1000 + n) for n in range(40)}
    process = start([str(ROOT / "clubbot.py")], env, folder)
    latencies: dict[int, float] = {}
    try:
        wait_for_port(port)
        while not telegram.called("getUpdates"):
            time.sleep(0.05)
        for update in flood_updates(flooder, flood):
            telegram.push_update(update)
        asked: dict[int, float] = {}

        def watch() -> None:
            deadline = time.monotonic() + 120
            while len(latencies) < len(members) and time.monotonic() < deadline:
                for user in list(asked):
                    if user not in latencies and any("active until" in m.get("text", "")
                                                     for m in telegram.messages_to(user)):
                        latencies[user] = time.monotonic() - asked[user]
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        for user, invoice_id in members.items():
            body = paid_body(invoice_id, database.connect().execute(
                "SELECT payment_uuid FROM invoices WHERE invoice_id = ?", (invoice_id,)).fetchone()[0])
            method, path, data, headers = signed(body)
            requests.post(f"http://127.0.0.1:{port}{path}", data=data, headers=headers, timeout=10)
            asked[user] = time.monotonic()
            time.sleep(0.2)
        watcher.join()
        answered = len(telegram.messages_to(flooder))
    finally:
        stop(process)
        telegram.close()
        cryptopay.close()
    return sorted(latencies.values()), len(members) - len(latencies), answered


def bench_flood(folder: Path) -> None:
    print("flood (one member sends 1,200 commands during 40 activations; TELEGRAM_RATE=25)")
    results = {}
    for flood in (0, 1200):
        (folder / str(flood)).mkdir()
        latencies, lost, answered = activation_latencies(folder / str(flood), flood)
        p50 = latencies[len(latencies) // 2] if latencies else float("nan")
        worst = latencies[-1] if latencies else float("nan")
        label = "with the flood" if flood else "alone"
        row(f"activation to message, {label}: median / worst", f"{p50:5.2f} s / {worst:5.2f} s",
            "within a few s of alone" if flood else "")
        if flood:
            row("the flooder's commands answered", f"{answered} of {flood}")
        row(f"activations not delivered, {label}", str(lost), "0")
        results[str(flood)] = {"median_s": round(p50, 3), "worst_s": round(worst, 3), "lost": lost,
                               "flooder_answered": answered}
    RESULTS["flood"] = results


# --- size ---

def seed_big(database: Database, members: int = 100_000, payments: int = 1_000_000) -> None:
    """Members with time left, and a year of paid invoices spread over them."""
    now = int(time.time())
    with database.transaction() as tx:
        tx.executemany("INSERT INTO members (user_id, uuid, username, language, created_at) "
                       "VALUES (?, ?, ?, 'ru', ?)",
                       [(user, str(uuid.uuid4()), f"user{user}", now - 400 * 86400) for user in range(members)])
        tx.executemany("INSERT INTO subscriptions (user_id, expires_at, period_start, updated_at) "
                       "VALUES (?, ?, ?, ?)",
                       [(user, now + (user % 60 + 1) * 86400, now - 300 * 86400, now - 10 * 86400)
                        for user in range(members)])
    step = 100_000
    for start_at in range(0, payments, step):
        with database.transaction() as tx:
            tx.executemany(
                "INSERT INTO invoices (payment_uuid, invoice_id, user_id, plan_id, duration, amount, currency, "
                "currency_type, status, created_at, expires_at, paid_at, applied_by) "
                "VALUES (?, ?, ?, 'month', 2592000, '5', 'USDT', 'crypto', 'paid', ?, ?, ?, 'webhook')",
                [(str(uuid.uuid4()), n + 1, n % members, paid - 60, paid + 3600, paid)
                 for n in range(start_at, min(payments, start_at + step))
                 for paid in (now - (n * 31_536_000) // payments,)])


def start_and_measure(folder: Path, env: dict) -> tuple[float, float]:
    """Seconds from start to a healthy /health, and the idle process's RSS in MB."""
    import http.client

    port = int(env["WEBHOOK_PORT"])
    started = time.monotonic()
    process = start([str(ROOT / "clubbot.py")], env, folder)
    try:
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.01)
        ready = time.monotonic() - started
        time.sleep(3)  # idle: polls, sweeps and long polls go on
        return ready, rss_mb(process.pid)
    finally:
        stop(process)


def bench_size(folder: Path) -> None:
    import statistics

    from fakes import FakeCryptoPay, FakeTelegram

    import admin

    print("size (the all-in-one process)")
    telegram, cryptopay = FakeTelegram(BOT_TOKEN), FakeCryptoPay(PAY_TOKEN)
    results = {}
    for label, seeded in (("empty database", False), ("100,000 members and 1,000,000 payments", True)):
        env = base_env(folder, telegram.url, cryptopay.api_url, free_port(),
                       DATABASE_PATH=str(folder / f"{'big' if seeded else 'empty'}.db"))
        database = Database(env["DATABASE_PATH"])
        database.migrate()
        if seeded:
            seed_big(database)
        ready, rss = start_and_measure(folder, env)
        row(f"{label}: start to healthy /health", f"{ready:.2f} s", "<= 1.5 s")
        row(f"{label}: idle RSS", f"{rss:.1f} MB", "<= 80 MB" if seeded else "<= 60 MB")
        results["big" if seeded else "empty"] = {"ready_s": round(ready, 2), "rss_mb": round(rss, 1)}
        if seeded:
            timings = []
            for _ in range(5):
                started = time.perf_counter()
                admin.stats_text(database, int(time.time()), "en")
                timings.append(time.perf_counter() - started)
            row(f"{label}: /stats", f"{1000 * statistics.median(timings):.0f} ms", "<= 200 ms")
            results["stats_ms"] = round(1000 * statistics.median(timings))
    telegram.close()
    cryptopay.close()
    RESULTS["size"] = results


SECTIONS = {"webhook": bench_webhook, "fallback": bench_fallback, "sweep": bench_sweep, "flood": bench_flood,
            "size": bench_size}


def main(argv: list[str]) -> int:
    chosen = argv or list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        print(f"unknown section(s): {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix=f"clubbot-bench-{name}-") as folder:
            SECTIONS[name](Path(folder))
    print(json.dumps({"clubbot_bench": RESULTS}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
