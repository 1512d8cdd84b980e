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
    invoice_id = obj.get("invoice_id")
    if not isinstance(invoice_id, int) or isinstance(invoice_id, bool) or invoice_id <= 0:
        raise ValueError("invoice_id is not a positive integer")
    status = obj.get("status")
    if status not in ("active", "paid", "expired"):
        raise ValueError("status is not active, paid or expired")
    currency_type = obj.get("currency_type", "crypto")
    if currency_type not in ("crypto", "fiat"):
        raise ValueError("currency_type is not crypto or fiat")
    currency = obj.get("fiat" if currency_type == "fiat" else "asset")
    if not isinstance(currency, str) or not currency:
        raise ValueError("the invoice names no asset or fiat currency")
    raw_amount = obj.get("amount")
    if not isinstance(raw_amount, str):
        raise ValueError("amount is not a decimal string")
    try:
        amount = Decimal(raw_amount)
    except InvalidOperation:
        raise ValueError("amount is not a decimal string") from None
    if not amount.is_finite():
        raise ValueError("amount is not finite")
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
