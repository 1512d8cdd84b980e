"""A small Crypto Pay API client on `requests`, and the invoice shape we rely on.

Every call has a connect and read timeout. Any failure, an API error or the
network, is raised as CryptoPayError carrying the error's name and the HTTP
status (None when no answer came).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import requests

log = logging.getLogger("clubbot.cryptopay")

# Crypto Pay answers up to 1000 invoices per getInvoices call.
MAX_IDS_PER_CALL = 1000
TIMEOUT = (5, 15)  # connect, read (seconds)
MAX_SPEND_ID = 64  # transfer: spend_id is up to 64 characters
MAX_TRANSFER_COMMENT = 1024  # transfer: comment is up to 1024 characters

# The error names Crypto Pay answers `transfer` with. Crypto Pay's own documentation
# (help.crypt.bot/crypto-pay-api) lists no error names, so these were checked against
# public clients and bots that handle them:
# - SPEND_ID_ALREADY_USED, INSUFFICIENT_FUNDS, AMOUNT_TOO_SMALL: the troubleshooting guide of
#   the Python client github.com/ragnarok22/cryptobot_python (docs/troubleshooting.md,
#   "CryptoBotError: code=400, name=..."); SPEND_ID_ALREADY_USED and INSUFFICIENT_FUNDS are also
#   matched by name in independent production code (a PHP CryptobotPaymentProvider::withdraw,
#   an aiogram referral bot calling pay.crypt.bot/api/transfer).
# - USER_NOT_FOUND (the user never opened @CryptoBot): matched by name in that aiogram bot
#   and in a seller-payout service, both calling transfer.
# - Transfers not enabled for the app: NOT VERIFIED. Since Crypto Pay API 1.5 the transfer
#   method is off until the owner enables it in the app's settings, but no public source
#   seen shows the error name. METHOD_DISABLED is our best guess; TRANSFERS_DISABLED is
#   accepted too. NOT_ENOUGH_COINS is likewise an unverified alias of INSUFFICIENT_FUNDS.
ERR_SPEND_ID_USED = "SPEND_ID_ALREADY_USED"
ERR_INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
ERR_AMOUNT_TOO_SMALL = "AMOUNT_TOO_SMALL"
ERR_USER_NOT_FOUND = "USER_NOT_FOUND"
ERR_TRANSFERS_DISABLED = "METHOD_DISABLED"  # unverified, see above

_ENABLE_TRANSFERS = ("Transfers are not enabled for this app: in @CryptoBot open Crypto Pay > My Apps > "
                     "the app > Security and enable transfers (menu path not verified).")

# Error name -> what the owner should do. Every one is a definitive refusal (see
# CryptoPayError.is_refused) except SPEND_ID_ALREADY_USED, which means the transfer was made.
TRANSFER_ERRORS: dict[str, str] = {
    ERR_SPEND_ID_USED: "This transfer was already made (its spend_id was used before); nothing to do.",
    ERR_INSUFFICIENT_FUNDS: "The app's balance is too low: top up the app in @CryptoBot (Crypto Pay > My Apps).",
    "NOT_ENOUGH_COINS": "The app's balance is too low: top up the app in @CryptoBot (Crypto Pay > My Apps).",
    ERR_AMOUNT_TOO_SMALL: "The amount is below Crypto Pay's minimum transfer for this asset: send more at once.",
    ERR_USER_NOT_FOUND: "The recipient has never opened @CryptoBot: ask them to start @CryptoBot, then retry.",
    ERR_TRANSFERS_DISABLED: _ENABLE_TRANSFERS,
    "TRANSFERS_DISABLED": _ENABLE_TRANSFERS,
}
TRANSFER_REFUSALS = frozenset(TRANSFER_ERRORS) - {ERR_SPEND_ID_USED}


class CryptoPayError(Exception):
    """A Crypto Pay call failed. `name` is the API's error name (or NETWORK_ERROR)."""

    def __init__(self, method: str, name: str, status: int | None, detail: str = ""):
        text = f"{method}: {name}" + (f" (HTTP {status})" if status else "")
        super().__init__(text + (f": {detail}" if detail else ""))
        self.method = method
        self.name = name
        self.status = status

    @property
    def is_auth_error(self) -> bool:
        return self.status == 401 or self.name in ("UNAUTHORIZED", "INVALID_TOKEN", "EXPIRED_TOKEN")

    @property
    def is_duplicate_spend(self) -> bool:
        """The spend_id was used before: that transfer was already made, do not make it again."""
        return self.name == ERR_SPEND_ID_USED

    @property
    def is_refused(self) -> bool:
        """A definitive refusal of a transfer (funds, minimum, recipient, transfers disabled):
        retrying the same request will not help until the owner acts. False for outages
        (NETWORK_ERROR, BAD_RESPONSE, 5xx, 429) and for unknown error names."""
        return self.name in TRANSFER_REFUSALS

    @property
    def advice(self) -> str | None:
        """What the owner should do about a transfer error, if it is one we know."""
        return TRANSFER_ERRORS.get(self.name)


def signature(token: str, body: bytes) -> str:
    """hex(HMAC-SHA256(key=SHA256(token), msg=body)): the crypto-pay-api-signature header."""
    key = hashlib.sha256(token.encode("utf-8")).digest()
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def signature_matches(token: str, body: bytes, header: str | None) -> bool:
    if not header:
        return False
    expected = signature(token, body).encode("ascii")
    given = header.strip().lower().encode("latin-1", "replace")
    return hmac.compare_digest(expected, given)


@dataclass(frozen=True)
class Invoice:
    """The fields of a Crypto Pay Invoice object that ClubBot uses."""

    invoice_id: int
    status: str  # active, paid, expired
    currency_type: str  # crypto, fiat
    currency: str  # the asset for crypto invoices, the fiat code for fiat ones
    amount: Decimal
    payload: str | None
    pay_url: str | None
    paid_asset: str | None
    paid_amount: str | None


def parse_invoice(obj: Any) -> Invoice:
    """Validate an Invoice object (from a webhook or getInvoices); ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError("invoice is not an object")
    invoice_id = _positive_int(obj, "invoice_id")
    status = obj.get("status")
    if status not in ("active", "paid", "expired"):
        raise ValueError("status is not active, paid or expired")
    currency_type = obj.get("currency_type", "crypto")
    if currency_type not in ("crypto", "fiat"):
        raise ValueError("currency_type is not crypto or fiat")
    currency = obj.get("fiat" if currency_type == "fiat" else "asset")
    if not isinstance(currency, str) or not currency:
        raise ValueError("the invoice names no asset or fiat currency")
    amount = _decimal(obj.get("amount"), "amount", strings_only=True)
    payload = obj.get("payload")
    if payload is not None and not isinstance(payload, str):
        raise ValueError("payload is not a string")
    pay_url = obj.get("bot_invoice_url") or obj.get("pay_url")
    paid_asset = obj.get("paid_asset")
    paid_amount = obj.get("paid_amount")
    return Invoice(
        invoice_id=invoice_id,
        status=status,
        currency_type=currency_type,
        currency=currency,
        amount=amount,
        payload=payload,
        pay_url=pay_url if isinstance(pay_url, str) else None,
        paid_asset=paid_asset if isinstance(paid_asset, str) else None,
        paid_amount=paid_amount if isinstance(paid_amount, str) else None,
    )


@dataclass(frozen=True)
class UnreadableInvoice:
    """An item of getInvoices that parse_invoice refused: kept, so that it is never taken
    for an invoice Crypto Pay no longer returns (one that may be paid must not be expired)."""

    invoice_id: int | None  # when the item still names one
    error: str


@dataclass(frozen=True)
class InvoiceBatch:
    """What getInvoices returned: the invoices read, and the items that could not be."""

    found: list[Invoice]
    unreadable: list[UnreadableInvoice]


@dataclass(frozen=True)
class Transfer:
    """A Crypto Pay Transfer object (the result of `transfer`)."""

    transfer_id: int
    spend_id: str
    user_id: int
    asset: str
    amount: Decimal
    status: str  # "completed"
    completed_at: str | None  # ISO 8601
    comment: str | None = None


def _positive_int(obj: dict, field: str) -> int:
    value = obj.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{field} is not a positive integer")
    return value


def _text(obj: dict, field: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field} is not a string")
    return value


def _decimal(raw: Any, field: str, strings_only: bool = False) -> Decimal:
    """A finite decimal from a string (or, unless `strings_only`, an integer); ValueError if not."""
    if isinstance(raw, bool) or not isinstance(raw, str if strings_only else (str, int)):
        raise ValueError(f"{field} is not a decimal string")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"{field} is not a decimal string") from None
    if not value.is_finite():
        raise ValueError(f"{field} is not finite")
    return value


def parse_transfer(obj: Any) -> Transfer:
    """Validate a Transfer object; ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError("transfer is not an object")
    transfer_id = _positive_int(obj, "transfer_id")
    spend_id = _text(obj, "spend_id")
    user_id = obj.get("user_id")
    if isinstance(user_id, str) and user_id.isdigit():
        user_id = int(user_id)
    if not isinstance(user_id, int) or isinstance(user_id, bool):
        raise ValueError("user_id is not an integer")
    asset = _text(obj, "asset")
    status = _text(obj, "status")
    completed_at = obj.get("completed_at")
    comment = obj.get("comment")
    return Transfer(
        transfer_id=transfer_id,
        spend_id=spend_id,
        user_id=user_id,
        asset=asset,
        amount=_decimal(obj.get("amount"), "amount"),
        status=status,
        completed_at=completed_at if isinstance(completed_at, str) else None,
        comment=comment if isinstance(comment, str) else None,
    )


def item_invoice_id(item: Any) -> int | None:
    """The invoice id an unreadable item names, if it names one at all."""
    raw = item.get("invoice_id") if isinstance(item, dict) else None
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    return None


def _chunks(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class CryptoPay:
    def __init__(self, base_url: str, token: str, timeout: tuple[float, float] = TIMEOUT,
                 session: requests.Session | None = None):
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout
        self._session = session
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        """One session per thread (update handlers, the poller and the sender call at once;
        requests does not promise that a session is safe to share), unless one was given."""
        if self._session is not None:
            return self._session
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def call(self, method: str, **params: Any) -> Any:
        """POST a method with JSON params and return its `result`."""
        url = f"{self.base_url}/{method}"
        body = {k: v for k, v in params.items() if v is not None}
        try:
            response = self.session.post(
                url, json=body, timeout=self.timeout,
                headers={"Crypto-Pay-API-Token": self._token},
            )
        except requests.RequestException as exc:
            raise CryptoPayError(method, "NETWORK_ERROR", None, type(exc).__name__) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise CryptoPayError(method, "BAD_RESPONSE", response.status_code, "not JSON")
        if not data.get("ok"):
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            name = str(error.get("name") or "UNKNOWN_ERROR")
            status = response.status_code if response.status_code != 200 else int(error.get("code") or 400)
            raise CryptoPayError(method, name, status)
        if "result" not in data:
            raise CryptoPayError(method, "BAD_RESPONSE", response.status_code, "no result")
        return data["result"]

    def get_me(self) -> dict:
        return self.call("getMe")

    def create_invoice(self, *, amount: Decimal, currency: str, fiat: bool, payload: str,
                       description: str, expires_in: int, accepted_assets: Iterable[str] = (),
                       paid_btn_url: str | None = None) -> Invoice:
        params: dict[str, Any] = {
            "amount": format(amount, "f"),
            "description": description[:1024],
            "payload": payload,
            "expires_in": expires_in,
            "allow_comments": False,
            "allow_anonymous": False,
        }
        if fiat:
            params["currency_type"] = "fiat"
            params["fiat"] = currency
            assets = ",".join(accepted_assets)
            if assets:
                params["accepted_assets"] = assets
        else:
            params["currency_type"] = "crypto"
            params["asset"] = currency
        if paid_btn_url:
            params["paid_btn_name"] = "openBot"
            params["paid_btn_url"] = paid_btn_url
        result = self.call("createInvoice", **params)
        try:
            return parse_invoice(result)
        except ValueError as exc:
            raise CryptoPayError("createInvoice", "BAD_RESPONSE", 200, str(exc)) from None

    def fetch_invoices(self, invoice_ids: list[int]) -> InvoiceBatch:
        """The invoices with these ids, asked for up to 1000 a call, and the items that could not be read."""
        found: list[Invoice] = []
        unreadable: list[UnreadableInvoice] = []
        for chunk in _chunks(list(invoice_ids), MAX_IDS_PER_CALL):
            result = self.call("getInvoices", invoice_ids=",".join(map(str, chunk)), count=len(chunk))
            items = result.get("items") if isinstance(result, dict) else None
            if not isinstance(items, list):
                raise CryptoPayError("getInvoices", "BAD_RESPONSE", 200, "no items")
            for item in items:
                try:
                    found.append(parse_invoice(item))
                except ValueError as exc:
                    invoice_id = item_invoice_id(item)
                    log.warning("getInvoices returned a malformed invoice (%s): %s",
                                invoice_id if invoice_id is not None else "no readable invoice_id", exc)
                    unreadable.append(UnreadableInvoice(invoice_id, str(exc)))
        return InvoiceBatch(found, unreadable)

    def get_invoices(self, invoice_ids: list[int]) -> list[Invoice]:
        """The invoices with these ids that could be read (see fetch_invoices for the others)."""
        return self.fetch_invoices(invoice_ids).found

    def get_balance(self) -> dict[str, Decimal]:
        """The app's available balance per currency code (getBalance); on-hold amounts are left out."""
        result = self.call("getBalance")
        if not isinstance(result, list):
            raise CryptoPayError("getBalance", "BAD_RESPONSE", 200, "not a list")
        balances: dict[str, Decimal] = {}
        for item in result:
            code = item.get("currency_code") if isinstance(item, dict) else None
            if not isinstance(code, str) or not code:
                raise CryptoPayError("getBalance", "BAD_RESPONSE", 200, "an item names no currency_code")
            try:
                balances[code] = _decimal(item.get("available"), "available")
            except ValueError as exc:
                raise CryptoPayError("getBalance", "BAD_RESPONSE", 200, f"{code}: {exc}") from None
        return balances

    def transfer(self, user_id: int, asset: str, amount: Decimal, spend_id: str,
                 comment: str | None = None) -> Transfer:
        """Send `amount` of `asset` from the app's balance to a Telegram user (transfer).

        `spend_id` makes the call idempotent: Crypto Pay accepts a spend_id once, so a retry
        after a timeout or a BAD_RESPONSE must reuse it, and then CryptoPayError.is_duplicate_spend
        means the first call went through. `is_refused` errors are definitive (see TRANSFER_ERRORS).
        """
        if not spend_id or len(spend_id) > MAX_SPEND_ID:
            raise ValueError(f"spend_id must be 1 to {MAX_SPEND_ID} characters")
        if not amount.is_finite() or amount <= 0:
            raise ValueError("amount must be positive")
        result = self.call(
            "transfer", user_id=user_id, asset=asset, amount=format(amount, "f"), spend_id=spend_id,
            comment=comment[:MAX_TRANSFER_COMMENT] if comment else None,
        )
        try:
            return parse_transfer(result)
        except ValueError as exc:
            raise CryptoPayError("transfer", "BAD_RESPONSE", 200, str(exc)) from None
