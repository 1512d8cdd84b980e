"""The background loops: the payment poller, the sweeper, and start_thread (outbox.py has the
sender's loop, updates.py Telegram's updates).

Each loop has a stop event, bounded waits, backoff, one log line per failure,
and survives a bad row.
"""
from __future__ import annotations

import logging
import threading

import stars
from access import check_rights
from cryptopay import CryptoPayError
from outbox import LONGEST_WAIT
from payments import WebhookWatch, poll_every, poll_once
from runtime import App
from tg import Stopping

log = logging.getLogger("clubbot.workers")

JOIN_REQUEST_WAIT = 86400  # a join request waits this long for a payment, then is declined
UPDATES_KEPT = 7 * 86400  # handled Telegram updates are remembered this long (Telegram keeps them a day)


class Sweeper:
    """Every SWEEP_INTERVAL, first at start: stale join requests, reminders, expiries, the bot's rights."""

    def __init__(self, app: App):
        self.app = app
        self.stars_checked: float | None = None  # when missed Stars payments were last looked for

    def run(self) -> None:
        interval = self.app.config.sweep_interval
        delay = 0.0
        log.info("sweeper started, every %ss", interval)
        while not self.app.stop.wait(delay):
            self.app.heartbeat("sweeper")
            delay = interval
            try:
                self.sweep_once()
            except Stopping:
                pass  # the loop ends: the app is stopping
            except Exception:
                log.exception("sweep failed")
        log.info("sweeper stopped")

    def reconcile_stars(self, now: int) -> None:
        """At start and every stars.RECONCILE_EVERY, when any plan is sold in Stars: payments
        missed (the bot down for longer than Telegram keeps updates) caught up."""
        if not any(plan.is_stars for plan in self.app.config.plans):
            return
        if self.stars_checked is not None and now - self.stars_checked < stars.RECONCILE_EVERY:
            return
        self.stars_checked = now
        try:
            stars.reconcile(self.app)
        except Exception as exc:  # Telegram down: the next round asks again
            log.warning("getStarTransactions failed: %s", exc)

    def sweep_once(self) -> dict[str, int]:
        now = self.app.now()
        db, config = self.app.db, self.app.config
        db.expire_star_invoices(now)
        done = {"declined": db.queue_declines(now - JOIN_REQUEST_WAIT, now),
                "reminded": db.queue_reminders(now, config.remind_before), "expired": 0,
                "undone": db.undo_early_removals(now),
                "pulled back": db.pull_back_future_work(now, LONGEST_WAIT)}
        while not self.app.stop.is_set():
            batch = db.queue_expiries(now, config.grace_period)
            done["expired"] += batch
            if batch < 500:
                break
        if any(done.values()):
            log.info("sweep: %(expired)d expired, %(reminded)d reminders, %(declined)d join requests declined, "
                     "%(undone)d removals undone and %(pulled back)d messages made due (the clock had run ahead)",
                     done)
            self.app.wake_sender()
        db.forget_updates(now - UPDATES_KEPT)
        if self.app.bot is not None:
            check_rights(self.app, now)
            self.reconcile_stars(now)
        return done


class Poller:
    """Asks Crypto Pay about pending invoices every POLL_INTERVAL (every few seconds without a
    webhook: payments.poll_every), first at start."""

    def __init__(self, app: App):
        self.app = app
        # The payments this poller applied, looked at again once their webhooks had time to come.
        self.watch = WebhookWatch()

    def run(self) -> None:
        interval = poll_every(self.app.config)
        failures = 0
        delay = 0.0
        log.info("payment poller started, every %ss%s", interval,
                 "" if self.app.config.webhook_url else " (no WEBHOOK_URL: polling is how payments are seen)")
        while not self.app.stop.wait(delay):
            self.app.heartbeat("poller")
            try:  # first, and whether or not Crypto Pay answers below
                self.watch.check(self.app)
            except Exception:
                log.exception("poller: checking whether webhooks arrive failed")
            try:
                poll_once(self.app, self.watch)
            except Exception as exc:  # Crypto Pay, or the database, say: each backed off alike
                failures += 1
                delay = min(interval * 2 ** failures, max(interval, 300))
                if isinstance(exc, CryptoPayError):
                    log.warning("poller: Crypto Pay failed (%s); next try in %ss", exc, delay)
                else:
                    log.exception("poller: unexpected failure; next try in %ss", delay)
                continue
            if failures:
                log.info("poller: Crypto Pay answers again")
            failures = 0
            delay = interval
        log.info("payment poller stopped")


def start_thread(name: str, target) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
