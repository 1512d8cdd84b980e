"""A member's whole year, black box: `python clubbot.py` against the fake Telegram and Crypto Pay,
with months a few seconds long: buy, pay, join, reminder, early renewal, expiry, removal, return."""
import signal
import time

import pytest
from builders import buttons, callback_query, join_request, message, paid_update, person
from conftest import CLUB_CHAT, ROOT, post_signed, start_process, wait_for

MONTH = 8  # seconds
MEMBER = 501
ANNA = person(MEMBER, "ru", first_name="Anna", username="anna")


def says(telegram, text: str) -> None:
    telegram.push_update(message(text, sender=ANNA))


def presses(telegram, data: str) -> None:
    telegram.push_update(callback_query(data, sender=ANNA))


def asks_to_join(telegram) -> None:
    telegram.push_update(join_request(sender=ANNA))


def new_message(telegram, seen: int, containing: str, timeout: float = 20) -> dict:
    def found():
        fresh = telegram.messages_to(MEMBER)[seen:]
        return next((m for m in fresh if containing in m["text"]), None)
    return wait_for(found, timeout=timeout, step=0.05)


def pays(telegram, cryptopay, port: int) -> None:
    """Picks the plan, and pays the invoice shown; CryptoBot's webhook follows."""
    seen = len(telegram.messages_to(MEMBER))
    presses(telegram, "plan:month")
    invoice_message = new_message(telegram, seen, "Оплатите счёт")
    pay_button = buttons(invoice_message)[0]
    invoice_id = int(pay_button["url"].rsplit("IV", 1)[1])
    invoice = cryptopay.pay(invoice_id)
    assert post_signed(f"http://127.0.0.1:{port}/webhook/cryptobot", paid_update(invoice)).status_code == 200


@pytest.mark.slow
def test_a_members_year(tmp_path, env, telegram, cryptopay):
    env = {**env, "PLANS": f"month:{MONTH}s:5:USDT", "REMIND_BEFORE": "4s", "SWEEP_INTERVAL": "1s",
           "POLL_INTERVAL": "1s", "GRACE_PERIOD": "0"}
    port = int(env["WEBHOOK_PORT"])
    process = start_process([str(ROOT / "clubbot.py")], env, tmp_path)
    try:
        wait_for(lambda: telegram.called("getUpdates"), timeout=20)

        # January: she finds the bot and buys a month.
        says(telegram, "/start")
        greeting = new_message(telegram, 0, "Добро пожаловать")
        assert buttons(greeting)[0]["callback_data"] == "plan:month"
        seen = len(telegram.messages_to(MEMBER))
        pays(telegram, cryptopay, port)
        paid_at = time.monotonic()
        welcome = new_message(telegram, seen, "Оплата получена")
        link = buttons(welcome)[0]["url"]
        assert link.startswith("https://t.me/+")

        # She follows her link: the join request is approved at once.
        asks_to_join(telegram)
        wait_for(lambda: telegram.called("approveChatJoinRequest"))

        # Before the month ends, a reminder with a renew button.
        seen = len(telegram.messages_to(MEMBER))
        reminder = new_message(telegram, seen, "заканчивается")
        assert time.monotonic() - paid_at >= MONTH - 4 - 1.5
        assert buttons(reminder)[0]["callback_data"] == "plan:month"

        # She renews early: the new month is added on top.
        seen = len(telegram.messages_to(MEMBER))
        pays(telegram, cryptopay, port)
        renewed = new_message(telegram, seen, "Оплата получена")
        assert telegram.removed == []
        says(telegram, "/status")
        status = new_message(telegram, seen, "активна до")
        assert "активна до" in status["text"] and renewed

        # Two months after the first payment, she is removed, and told how to come back.
        seen = len(telegram.messages_to(MEMBER))
        notice = new_message(telegram, seen, "закончилась", timeout=2 * MONTH + 10)
        elapsed = time.monotonic() - paid_at
        assert 2 * MONTH - 1.5 <= elapsed <= 2 * MONTH + 5
        assert telegram.removed == [(CLUB_CHAT, MEMBER)]
        assert buttons(notice)[0]["callback_data"] == "plan:month"

        # She comes back: pays again, asks to join, and is let in again.
        seen = len(telegram.messages_to(MEMBER))
        pays(telegram, cryptopay, port)
        back = new_message(telegram, seen, "Оплата получена")
        assert buttons(back)[0]["url"] == link  # her personal link still works
        asks_to_join(telegram)
        wait_for(lambda: len(telegram.called("approveChatJoinRequest")) == 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    log = (tmp_path / "logs" / "clubbot.log").read_text()
    assert log.count("subscription activated") == 3
    assert "subscription removed: member 501" in log
