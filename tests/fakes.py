"""Fake Telegram Bot API and Crypto Pay API: small HTTP servers on 127.0.0.1.

They answer the methods ClubBot uses, record every call, and can be told to
fail (a status and body, N times) or to hang, per method. Usable from
in-process tests and from ClubBot subprocesses alike.
"""
from __future__ import annotations

import itertools
import json
import secrets
import socket
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


class FakeServer:
    def __init__(self):
        self.lock = threading.Lock()
        self.calls: list[tuple[str, dict]] = []
        self.failures: dict[str, list[tuple[int, object]]] = {}
        self.hang: set[str] = set()
        self.released = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle's algorithm on, the body
            # would wait for the client's delayed ACK (~40 ms a call).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._handle()

            def do_POST(self):
                self._handle()

            def _handle(self):
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if raw:
                    content_type = self.headers.get("Content-Type") or ""
                    if content_type.startswith("application/json"):
                        params.update(json.loads(raw))
                    elif content_type.startswith("multipart/form-data"):
                        params["_raw"] = raw
                    else:
                        params.update(dict(parse_qsl(raw.decode())))
                status, body = fake.dispatch(parts.path, params, self.headers)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json" if not isinstance(body, bytes) else "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client killed mid-request (the fault tests do that on purpose)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.timeout = 1.0  # handle_request()'s longest wait; close() wakes it at once
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        # Not serve_forever(): its shutdown() waits out a polling interval, every test twice.
        while not self.closing.is_set():
            self.server.handle_request()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, method: str, *answers: tuple[int, object]) -> None:
        """The next calls of `method` get these (status, body) answers, in order."""
        with self.lock:
            self.failures.setdefault(method, []).extend(answers)

    def dispatch(self, path: str, params: dict, headers) -> tuple[int, object]:
        method = path.rsplit("/", 1)[-1]
        with self.lock:
            self.calls.append((method, params))
            queued = self.failures.get(method)
            failure = queued.pop(0) if queued else None
        if method in self.hang:
            self.released.wait(60)
        if failure is not None:
            return failure
        return self.answer(method, params, headers)

    def answer(self, method: str, params: dict, headers) -> tuple[int, object]:
        raise NotImplementedError

    def called(self, method: str) -> list[dict]:
        with self.lock:
            return [params for name, params in self.calls if name == method]

    def close(self) -> None:
        self.released.set()
        self.closing.set()
        try:  # a connection wakes the loop, which then sees `closing`
            socket.create_connection(self.server.server_address, timeout=1).close()
        except OSError:
            pass
        self.thread.join(5)
        self.server.server_close()


def chat_member(user_id: int, status: str) -> dict:
    """A ChatMember as the Bot API gives it; an administrator has every right (777 is the bot)."""
    member = {"user": {"id": user_id, "is_bot": user_id == 777, "first_name": "U"}, "status": status}
    if status == "creator":
        member["is_anonymous"] = False
    if status == "kicked":
        member["until_date"] = 0
    if status == "administrator":
        member.update(can_be_edited=False, is_anonymous=False, can_manage_chat=True, can_delete_messages=True,
                      can_manage_video_chats=True, can_restrict_members=True, can_promote_members=False,
                      can_change_info=True, can_invite_users=True, can_post_stories=False,
                      can_edit_stories=False, can_delete_stories=False)
    return member


STAR_METHODS = frozenset({"createInvoiceLink", "answerPreCheckoutQuery", "refundStarPayment",
                          "editUserStarSubscription", "getStarTransactions"})
_update_ids = itertools.count(1)


def bad_request(description: str) -> tuple[int, dict]:
    """A Bot API 400 with Telegram's "Bad Request: ..." description."""
    return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {description}"}


def star_user(user_id: int) -> dict:
    return {"id": int(user_id), "is_bot": False, "first_name": "U"}


def successful_payment_message(user_id: int, payment: dict, message_id: int | None = None,
                               date: int | None = None) -> dict:
    """A private Message carrying `payment` (from FakeTelegram.star_payment or renew);
    push it with telegram.push_update({"message": successful_payment_message(...)})."""
    return {"message_id": next(_update_ids) if message_id is None else message_id,
            "date": int(time.time()) if date is None else date,
            "chat": {"id": int(user_id), "type": "private", "first_name": "U"},
            "from": star_user(user_id), "successful_payment": payment}


def pre_checkout_query(user_id: int, payload: str, amount: int, currency: str = "XTR") -> dict:
    """A PreCheckoutQuery; push it with telegram.push_update({"pre_checkout_query": ...})."""
    return {"id": str(next(_update_ids) * 1000 + secrets.randbelow(1000)), "from": star_user(user_id),
            "currency": currency, "total_amount": int(amount), "invoice_payload": payload}


class FakeTelegram(FakeServer):
    """The Bot API at {url}/bot{token}/{method}."""

    def __init__(self, token: str):
        self.token = token
        self.updates: list[dict] = []
        self.update_ids = itertools.count(1)
        self.message_ids = itertools.count(1)
        self.link_ids = itertools.count(1)
        self.confirmed = 0
        self.chat_titles: dict[int, str] = {}
        self.sent: list[dict] = []  # sendMessage calls that were answered ok
        self.removed: list[tuple[int, int]] = []  # (chat, user) banned and unbanned again
        self.banned: set[tuple[int, int]] = set()
        self.owners: dict[int, int] = {}  # chat -> its owner's user id
        self.admins: dict[int, list[int]] = {}  # chat -> other admins' user ids
        self.rights_lost: set[int] = set()  # chats where the bot is no longer an admin
        self.bot_rights: dict[int, dict] = {}  # chat -> the bot's admin rights there that differ
        self.chat_types: dict[int, str] = {}  # chat -> its type; default "channel"
        self.statuses: dict[tuple[int, int], str] = {}  # (chat, user) -> "left", ...; default "member"
        self.migrated: dict[int, int] = {}  # a group upgraded to a supergroup: old id -> new id
        self.rate_limit: int | None = None  # calls allowed in any one second; beyond: 429
        self.too_many = 0
        self._window: list[float] = []
        # Telegram Stars (see star_payment, renew and the Stars methods in answer)
        self.now = lambda: int(time.time())  # the clock for payments and refunds; tests may replace it
        self.invoice_links: dict[str, dict] = {}  # createInvoiceLink: link -> its params
        self.pre_checkout_answers: list[dict] = []  # answerPreCheckoutQuery params
        self.star_transactions: list[dict] = []  # StarTransaction JSON, incoming payments and refunds
        # charge id -> {"user_id", "payload", "amount", "date", "subscription": its first charge id or None}
        self.star_payments: dict[str, dict] = {}
        self.refunded: set[str] = set()  # charge ids refunded
        # first charge id -> {"user_id", "canceled", "payload", "amount", "period", "expires", "charges"}
        self.star_subscriptions: dict[str, dict] = {}
        super().__init__()

    def push_update(self, update: dict) -> dict:
        with self.lock:
            update = {"update_id": next(self.update_ids), **update}
            self.updates.append(update)
        return update

    def dispatch(self, path: str, params: dict, headers) -> tuple[int, object]:
        if not path.startswith(f"/bot{self.token}/"):
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        if self.rate_limit and not path.endswith("/getUpdates"):
            now = time.monotonic()
            with self.lock:
                self._window = [t for t in self._window if t > now - 1.0]
                if len(self._window) >= self.rate_limit:
                    self.too_many += 1
                    return 429, {"ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                                 "parameters": {"retry_after": 1}}
                self._window.append(now)
        chat_id = params.get("chat_id")
        if chat_id is not None and int(chat_id) in self.migrated:
            with self.lock:
                self.calls.append((path.rsplit("/", 1)[-1], params))
            return 400, {"ok": False, "error_code": 400,
                         "description": "Bad Request: group chat was upgraded to a supergroup chat",
                         "parameters": {"migrate_to_chat_id": self.migrated[int(chat_id)]}}
        return super().dispatch(path, params, headers)

    def answer(self, method: str, params: dict, headers) -> tuple[int, object]:
        if method == "getUpdates":
            return 200, {"ok": True, "result": self._get_updates(params)}
        result: object = True
        if method == "getMe":
            result = {"id": 777, "is_bot": True, "first_name": "Club", "username": "club_test_bot"}
        elif method == "getChat":
            chat_id = int(params["chat_id"])
            result = {"id": chat_id, "type": self.chat_types.get(chat_id, "channel"),
                      "title": self.chat_titles.get(chat_id, "Test Club"),
                      "accent_color_id": 0, "max_reaction_count": 0}
        elif method == "sendMessage":
            with self.lock:
                self.sent.append(params)
            result = {"message_id": next(self.message_ids), "date": int(time.time()),
                      "chat": {"id": int(params["chat_id"]), "type": "private"}, "text": params.get("text", "")}
        elif method in ("banChatMember", "unbanChatMember"):
            chat_id, user_id = int(params["chat_id"]), int(params["user_id"])
            if chat_id in self.rights_lost:
                return 400, {"ok": False, "error_code": 400,
                             "description": "Bad Request: not enough rights to restrict/ban chat member"}
            if user_id == self.owners.get(chat_id) or user_id in self.admins.get(chat_id, []):
                return 400, {"ok": False, "error_code": 400,
                             "description": "Bad Request: user is an administrator of the chat"}
            with self.lock:
                if method == "banChatMember":
                    self.banned.add((chat_id, user_id))
                elif (chat_id, user_id) in self.banned:
                    self.banned.discard((chat_id, user_id))
                    self.removed.append((chat_id, user_id))
        elif method == "sendDocument":
            result = {"message_id": next(self.message_ids), "date": int(time.time()),
                      "chat": {"id": int(params["chat_id"]), "type": "private"},
                      "document": {"file_id": "f1", "file_unique_id": "u1"}}
        elif method == "editMessageText":
            result = {"message_id": int(params["message_id"]), "date": int(time.time()),
                      "chat": {"id": int(params["chat_id"]), "type": "private"}, "text": params.get("text", "")}
        elif method == "getChatAdministrators":
            chat_id = int(params["chat_id"])
            if chat_id in self.rights_lost:
                return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
            people = [(self.owners.get(chat_id, 1), "creator"), (777, "administrator")]
            people += [(user, "administrator") for user in self.admins.get(chat_id, [])]
            result = [chat_member(user, status) for user, status in people]
        elif method == "getChatMember":
            chat_id, user_id = int(params["chat_id"]), int(params["user_id"])
            if user_id == 777:  # the bot itself
                status = "member" if chat_id in self.rights_lost else "administrator"
            elif user_id == self.owners.get(chat_id):
                status = "creator"
            elif user_id in self.admins.get(chat_id, []):
                status = "administrator"
            else:
                with self.lock:
                    banned = (chat_id, user_id) in self.banned
                status = "kicked" if banned else self.statuses.get((chat_id, user_id), "member")
            result = chat_member(user_id, status)
            if user_id == 777 and status == "administrator":
                result.update(self.bot_rights.get(chat_id, {}))
        elif method in STAR_METHODS:
            return self._stars(method, params)
        elif method == "createChatInviteLink":
            result = {"invite_link": f"https://t.me/+fake{next(self.link_ids)}",
                      "creator": {"id": 777, "is_bot": True, "first_name": "Club"},
                      "creates_join_request": True, "is_primary": False, "is_revoked": False,
                      "name": params.get("name")}
        return 200, {"ok": True, "result": result}

    def _get_updates(self, params: dict) -> list[dict]:
        offset = int(params.get("offset") or 0)
        wait = min(float(params.get("timeout") or 0), 30)  # a real long poll
        deadline = time.monotonic() + wait
        while True:
            with self.lock:
                if offset:
                    self.confirmed = max(self.confirmed, offset - 1)
                    self.updates = [u for u in self.updates if u["update_id"] >= offset]
                ready = list(self.updates)
            if ready or time.monotonic() >= deadline:
                return ready[: int(params.get("limit") or 100)]
            time.sleep(0.02)

    # Telegram Stars ---------------------------------------------------------------

    def _stars(self, method: str, params: dict) -> tuple[int, object]:
        if method == "createInvoiceLink":
            link = f"https://t.me/${secrets.token_urlsafe(12)}"
            period = params.get("subscription_period")
            with self.lock:
                self.invoice_links[link] = {
                    "title": params.get("title"), "description": params.get("description"),
                    "payload": params.get("payload"), "currency": params.get("currency"),
                    "prices": params.get("prices"),  # the JSON string sent: [{"label": .., "amount": ..}]
                    "subscription_period": int(period) if period not in (None, "") else None,
                }
            return 200, {"ok": True, "result": link}
        if method == "answerPreCheckoutQuery":
            with self.lock:
                self.pre_checkout_answers.append(params)
            return 200, {"ok": True, "result": True}
        if method == "refundStarPayment":
            charge_id = str(params.get("telegram_payment_charge_id") or "")
            with self.lock:
                payment = self.star_payments.get(charge_id)
                if payment is None or payment["user_id"] != int(params.get("user_id") or 0):
                    return bad_request("CHARGE_NOT_FOUND")
                if charge_id in self.refunded:
                    return bad_request("CHARGE_ALREADY_REFUNDED")
                self.refunded.add(charge_id)
                self.star_transactions.append({
                    "id": charge_id, "amount": payment["amount"], "date": self.now(),
                    "receiver": {"type": "user", "transaction_type": "invoice_payment",
                                 "user": star_user(payment["user_id"]), "invoice_payload": payment["payload"]},
                })
                if payment["subscription"] is not None:
                    self.star_subscriptions[payment["subscription"]]["canceled"] = True
            return 200, {"ok": True, "result": True}
        if method == "editUserStarSubscription":
            charge_id = str(params.get("telegram_payment_charge_id") or "")
            with self.lock:
                payment = self.star_payments.get(charge_id)
                if (payment is None or payment["subscription"] is None
                        or payment["user_id"] != int(params.get("user_id") or 0)):
                    return bad_request("CHARGE_NOT_FOUND")
                canceled = str(params.get("is_canceled")).lower() in ("true", "1")
                self.star_subscriptions[payment["subscription"]]["canceled"] = canceled
            return 200, {"ok": True, "result": True}
        # getStarTransactions
        offset = max(int(params.get("offset") or 0), 0)
        limit = min(max(int(params.get("limit") or 100), 1), 100)
        with self.lock:
            ordered = sorted(self.star_transactions, key=lambda t: t["date"])  # stable: ties keep their order
        return 200, {"ok": True, "result": {"transactions": ordered[offset:offset + limit]}}

    def star_payment(self, user_id: int, payload: str, amount: int, subscription_period: int | None = None,
                     recurring_of: str | None = None, date: int | None = None) -> dict:
        """Record a successful Stars payment by this user; return its `successful_payment` JSON.

        With `subscription_period` it starts a subscription (is_first_recurring); with
        `recurring_of` (the first charge id of a subscription) it is that subscription's next
        renewal, which `renew` makes for you. Wrap the result with successful_payment_message()
        and push_update({"message": ...}) to deliver it to the bot.
        """
        charge_id = "stx" + secrets.token_urlsafe(24)
        with self.lock:
            date = self.now() if date is None else int(date)
            payment = {"currency": "XTR", "total_amount": int(amount), "invoice_payload": payload,
                       "telegram_payment_charge_id": charge_id, "provider_payment_charge_id": ""}
            source = {"type": "user", "transaction_type": "invoice_payment", "user": star_user(user_id),
                      "invoice_payload": payload}
            subscription = None
            if recurring_of is not None:
                subscription = recurring_of
                sub = self.star_subscriptions[recurring_of]
                sub["expires"] += sub["period"]
                sub["charges"].append(charge_id)
                payment.update(subscription_expiration_date=sub["expires"], is_recurring=True,
                               is_first_recurring=False)
                source["subscription_period"] = sub["period"]
            elif subscription_period is not None:
                subscription = charge_id
                self.star_subscriptions[charge_id] = {
                    "user_id": int(user_id), "canceled": False, "payload": payload, "amount": int(amount),
                    "period": int(subscription_period), "expires": date + int(subscription_period),
                    "charges": [charge_id]}
                payment.update(subscription_expiration_date=date + int(subscription_period), is_recurring=True,
                               is_first_recurring=True)
                source["subscription_period"] = int(subscription_period)
            self.star_payments[charge_id] = {"user_id": int(user_id), "payload": payload, "amount": int(amount),
                                             "date": date, "subscription": subscription}
            self.star_transactions.append({"id": charge_id, "amount": int(amount), "date": date, "source": source})
        return payment

    def renew(self, first_charge_id: str, date: int | None = None) -> dict | None:
        """The next renewal payment of the subscription that `first_charge_id` started (same payload
        and price, a new charge id, expiration one period on), dated at its current expiration
        unless `date` is given. Returns None, and charges nothing, if it was canceled or refunded."""
        with self.lock:
            sub = self.star_subscriptions[first_charge_id]
            if sub["canceled"]:
                return None
            user_id, payload, amount, expires = sub["user_id"], sub["payload"], sub["amount"], sub["expires"]
        return self.star_payment(user_id, payload, amount, recurring_of=first_charge_id,
                                 date=expires if date is None else date)

    def messages_to(self, chat_id: int) -> list[dict]:
        """Messages delivered to this chat: the params of each successful sendMessage."""
        with self.lock:
            return [p for p in self.sent if int(p["chat_id"]) == chat_id]


class FakeCryptoPay(FakeServer):
    """The Crypto Pay API at {url}/api/{method}."""

    def __init__(self, token: str):
        self.token = token
        self.invoices: dict[int, dict] = {}
        self.invoice_ids = itertools.count(1001)
        self.balances: dict[str, Decimal] = {"USDT": Decimal("1000"), "TON": Decimal("1000"), "BTC": Decimal("1")}
        self.transfers_enabled = True
        self.transfers: dict[str, dict] = {}  # spend_id -> the Transfer JSON returned
        self.transfer_ids = itertools.count(5001)
        self.known_users: set[int] | None = None  # when a set: other recipients get USER_NOT_FOUND
        self.min_transfer: dict[str, Decimal] = {}  # asset -> minimum; below it: AMOUNT_TOO_SMALL
        super().__init__()

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def dispatch(self, path: str, params: dict, headers) -> tuple[int, object]:
        if headers.get("Crypto-Pay-API-Token") != self.token:
            return 401, {"ok": False, "error": {"code": 401, "name": "UNAUTHORIZED"}}
        return super().dispatch(path, params, headers)

    def answer(self, method: str, params: dict, headers) -> tuple[int, object]:
        if method == "getMe":
            return 200, {"ok": True, "result": {"app_id": 1, "name": "Club",
                                                "payment_processing_bot_username": "CryptoBot"}}
        if method == "createInvoice":
            invoice_id = next(self.invoice_ids)
            currency_type = params.get("currency_type", "crypto")
            invoice = {
                "invoice_id": invoice_id, "hash": f"IV{invoice_id}", "currency_type": currency_type,
                "amount": params["amount"], "status": "active", "payload": params.get("payload"),
                "description": params.get("description"), "expires_in": params.get("expires_in"),
                "paid_btn_name": params.get("paid_btn_name"), "paid_btn_url": params.get("paid_btn_url"),
                "bot_invoice_url": f"https://t.me/CryptoBot?start=IV{invoice_id}",
                "created_at": "2026-01-01T00:00:00.000Z", "allow_comments": False, "allow_anonymous": False,
            }
            if currency_type == "fiat":
                invoice["fiat"] = params["fiat"]
                invoice["accepted_assets"] = params.get("accepted_assets")
            else:
                invoice["asset"] = params["asset"]
            with self.lock:
                self.invoices[invoice_id] = invoice
            return 200, {"ok": True, "result": invoice}
        if method == "getInvoices":
            ids = [int(i) for i in str(params.get("invoice_ids", "")).split(",") if i]
            count = int(params.get("count") or 100)
            with self.lock:
                items = [dict(self.invoices[i]) for i in ids if i in self.invoices][:count]
            return 200, {"ok": True, "result": {"items": items}}
        if method == "getBalance":
            with self.lock:
                result = [{"currency_code": code, "available": format(value, "f"), "onhold": "0"}
                          for code, value in self.balances.items()]
            return 200, {"ok": True, "result": result}
        if method == "transfer":
            return self._transfer(params)
        return 400, {"ok": False, "error": {"code": 400, "name": "METHOD_NOT_FOUND"}}

    @staticmethod
    def error(name: str, code: int = 400) -> tuple[int, dict]:
        return code, {"ok": False, "error": {"code": code, "name": name}}

    def _transfer(self, params: dict) -> tuple[int, object]:
        """Checks, in order: transfers disabled (METHOD_DISABLED, a guess: see cryptopay.py),
        a spend_id seen before (SPEND_ID_ALREADY_USED, nothing moves), an unknown recipient,
        an amount under the minimum, then the balance (INSUFFICIENT_FUNDS)."""
        spend_id = str(params.get("spend_id") or "")
        asset = str(params.get("asset") or "")
        user_id = int(params.get("user_id") or 0)
        amount = Decimal(str(params.get("amount")))
        with self.lock:
            if not self.transfers_enabled:
                return self.error("METHOD_DISABLED")
            if spend_id in self.transfers:
                return self.error("SPEND_ID_ALREADY_USED")
            if self.known_users is not None and user_id not in self.known_users:
                return self.error("USER_NOT_FOUND")
            if amount < self.min_transfer.get(asset, Decimal(0)):
                return self.error("AMOUNT_TOO_SMALL")
            if amount > self.balances.get(asset, Decimal(0)):
                return self.error("INSUFFICIENT_FUNDS")
            self.balances[asset] -= amount
            transfer = {"transfer_id": next(self.transfer_ids), "spend_id": spend_id, "user_id": user_id,
                        "asset": asset, "amount": format(amount, "f"), "status": "completed",
                        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
            if params.get("comment"):
                transfer["comment"] = params["comment"]
            self.transfers[spend_id] = transfer
            return 200, {"ok": True, "result": dict(transfer)}

    def pay(self, invoice_id: int, amount: str | None = None, asset: str | None = None) -> dict:
        """Mark an invoice paid (optionally with another amount or asset); return it."""
        with self.lock:
            invoice = self.invoices[invoice_id]
            invoice["status"] = "paid"
            invoice["paid_at"] = "2026-01-01T00:05:00.000Z"
            if amount is not None:
                invoice["amount"] = amount
            if asset is not None:
                invoice["asset"] = asset
            invoice["paid_asset"] = invoice.get("asset") or "USDT"
            invoice["paid_amount"] = str(Decimal(invoice["amount"]))
            return dict(invoice)

    def expire(self, invoice_id: int) -> None:
        with self.lock:
            self.invoices[invoice_id]["status"] = "expired"

    def add_invoice(self, invoice: dict) -> None:
        with self.lock:
            self.invoices[invoice["invoice_id"]] = invoice


class RateLimitedBot:
    """An in-process stand-in for TeleBot on virtual time, for sweeps too big for HTTP.

    It enforces `limit` calls in any one (virtual) second and answers 429 with
    retry_after beyond it, as Telegram does; every call takes `latency` seconds.
    """

    def __init__(self, clock, limit: int, latency: float = 0.002):
        from collections import deque

        self.clock = clock
        self.limit = limit
        self.latency = latency
        self.window = deque()
        self.calls = 0
        self.too_many = 0
        self.banned: set[tuple[int, int]] = set()
        self.removed: list[tuple[int, int]] = []
        self.messages: list[int] = []

    def _hit(self, method: str) -> None:
        from telebot.apihelper import ApiTelegramException

        now = self.clock.monotonic()
        self.clock.advance(self.latency)
        self.calls += 1
        while self.window and self.window[0] <= now - 1.0:
            self.window.popleft()
        if len(self.window) >= self.limit:
            self.too_many += 1
            raise ApiTelegramException(method, None, {
                "ok": False, "error_code": 429, "description": "Too Many Requests: retry after 1",
                "parameters": {"retry_after": 1}})
        self.window.append(now)

    def ban_chat_member(self, chat_id, user_id):
        self._hit("banChatMember")
        self.banned.add((chat_id, user_id))
        return True

    def unban_chat_member(self, chat_id, user_id, only_if_banned=False):
        self._hit("unbanChatMember")
        if (chat_id, user_id) in self.banned:
            self.banned.discard((chat_id, user_id))
            self.removed.append((chat_id, user_id))
        return True

    def send_message(self, chat_id, text, **kwargs):
        self._hit("sendMessage")
        self.messages.append(chat_id)

    def get_chat_administrators(self, chat_id):
        from types import SimpleNamespace

        self._hit("getChatAdministrators")
        return [SimpleNamespace(user=SimpleNamespace(id=1), status="creator")]

    def get_chat(self, chat_id):
        from types import SimpleNamespace

        self._hit("getChat")
        return SimpleNamespace(id=chat_id, title="Club", type="supergroup")

    def get_me(self):
        from types import SimpleNamespace

        self._hit("getMe")
        return SimpleNamespace(id=777, username="club_test_bot")

    def get_chat_member(self, chat_id, user_id):
        from types import SimpleNamespace

        self._hit("getChatMember")
        if user_id != 777:
            return SimpleNamespace(status="kicked" if (chat_id, user_id) in self.banned else "member")
        return SimpleNamespace(status="administrator", can_invite_users=True, can_restrict_members=True)
