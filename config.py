"""Settings: read once from the environment and `.env`, validated, typed.

Every setting is declared once in SETTINGS as (name, converter, default).
A missing or bad value raises ConfigError naming the variable; the entry
points turn it into one line on stderr and exit code 2.
"""
from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REQUIRED = object()

# Fiat currencies Crypto Pay invoices can be priced in; any other code is an asset.
FIAT_CURRENCIES = frozenset(
    "USD EUR RUB BYN UAH GBP CNY KZT UZS GEL TRY AMD THB INR BRL IDR AZN AED PLN ILS KGS TJS".split()
)
# Telegram Stars: the currency of a plan paid in the bot, the one period a Stars subscription
# may have (30 days), and the most one invoice may ask.
STARS = "XTR"
STARS_PERIOD = 30 * 86400
MAX_STARS = 10_000
# What setup writes as DATABASE_PATH on testnet: test payments in a database of their own
# (a database refuses the other network: runtime.build_app).
TESTNET_DATABASE = "data/clubbot-testnet.db"
NETWORK_URLS = {
    "mainnet": "https://pay.crypt.bot/api",
    "testnet": "https://testnet-pay.crypt.bot/api",
}
# Where the HTTP server takes CryptoBot's webhooks (behind WEBHOOK_URL).
WEBHOOK_PATH = "/webhook/cryptobot"
# Crypto Pay accepts expires_in from 1 s to 31 days.
MAX_INVOICE_TTL = 2_678_400
# The longest duration anything may be (a plan, a grant, a reminder, a grace period):
# 100 years. Far beyond it, dates overflow what Python's datetime and sqlite's int64 hold.
MAX_DURATION = 36500 * 86400
# The most time one referral may earn: a year (more is a typo, and free membership for life).
MAX_REFERRAL_BONUS = 366 * 86400
# The longest wait between two polls or two sweeps: a longer one is a typo, not a plan.
MAX_INTERVAL = 86400
# Keys in .env that are not ClubBot settings but are fine to keep there.
FOREIGN_ENV_PREFIXES = ("PYTHON", "LC_", "LANG", "TZ", "HOME", "PATH")
# .env as systemd's EnvironmentFile= reads it (src/basic/env-file.c): the service's values come from there.
_ENV_SPACE = " \t\r"
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_ESCAPABLE = '"\\`$'  # in "...", a backslash before one of these keeps just the character
# .env.example's and README's stand-in for the owner's domain.
PLACEHOLDER_DOMAIN = "your-domain.com"


class ConfigError(ValueError):
    """A setting is missing or invalid; str() is the one line to show."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


@dataclass(frozen=True)
class Plan:
    id: str
    duration: int  # seconds
    amount: Decimal
    currency: str
    title: str | None = None

    @property
    def is_trial(self) -> bool:
        return self.amount == 0

    @property
    def is_fiat(self) -> bool:
        return self.currency in FIAT_CURRENCIES

    @property
    def is_stars(self) -> bool:
        """Paid in Telegram Stars in the bot, not through Crypto Pay."""
        return self.currency == STARS

    @property
    def renews(self) -> bool:
        """A 30-day Stars plan renews by itself every month (Telegram's only subscription period)."""
        return self.is_stars and self.duration == STARS_PERIOD


_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DurationTooLong(ValueError):
    """A well-formed duration beyond its limit; str() names the limit."""

    def __init__(self, text: str, maximum: int):
        super().__init__(f"'{text}' is longer than {describe_limit(maximum)}")
        self.maximum = maximum


def parse_duration(text: str, maximum: int = MAX_DURATION) -> int:
    """'30s', '5m', '1h', '30d' or '0' -> seconds, at most `maximum` (DurationTooLong beyond)."""
    text = text.strip()
    if text == "0":
        return 0
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"'{text}' is not a duration like 30s, 5m, 1h, 30d or 0")
    # Compared before int(): thousands of digits would be slow, or refused with an odd message.
    digits = match.group(1).lstrip("0") or "0"
    if len(digits) > len(str(maximum)):
        raise DurationTooLong(text, maximum)
    seconds = int(digits) * _UNIT_SECONDS[match.group(2)]
    if seconds > maximum:
        raise DurationTooLong(text, maximum)
    return seconds


def format_duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe_limit(seconds: int) -> str:
    """'36500d (100 years)', '1d': a limit as it is written, and in years when it is whole ones."""
    year = 365 * 86400
    years = f" ({seconds // year} years)" if seconds >= 2 * year and seconds % year == 0 else ""
    return format_duration(seconds) + years


def parse_amount(text: str) -> Decimal:
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"'{text}' is not a decimal amount") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"'{text}' is not a decimal amount of 0 or more")
    if amount.as_tuple().exponent < -18:
        raise ValueError(f"'{text}' has too many decimal places")
    return amount


# --- converters: str -> value, raising ValueError with a readable reason ---

def _token(text: str) -> str:
    if not re.fullmatch(r"\d+:[A-Za-z0-9_-]{5,}", text):
        raise ValueError("does not look like a token (digits, a colon, then the secret)")
    return text


def _int_list(text: str) -> tuple[int, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("is empty")
    values = []
    for item in items:
        if not re.fullmatch(r"-?\d+", item):
            raise ValueError(f"'{item}' is not a numeric id")
        values.append(int(item))
    if len(set(values)) != len(values):
        raise ValueError("lists an id twice")
    return tuple(values)


def _admin_ids(text: str) -> frozenset[int]:
    return frozenset(_int_list(text)) if text.strip() else frozenset()


def _plans(text: str) -> tuple[Plan, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("is empty")
    plans: list[Plan] = []
    for number, item in enumerate(items, 1):
        parts = item.split(":", 4)
        where = f"plan {number} '{item}'"
        if len(parts) < 4:
            raise ValueError(f"{where}: expected id:duration:amount:currency[:title]")
        plan_id, duration, amount, currency = (p.strip() for p in parts[:4])
        title = parts[4].strip() if len(parts) == 5 and parts[4].strip() else None
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", plan_id):
            raise ValueError(f"{where}: id must be 1-32 letters, digits, _ or -")
        if any(p.id == plan_id for p in plans):
            raise ValueError(f"{where}: id '{plan_id}' is used twice")
        try:
            seconds = parse_duration(duration)
            value = parse_amount(amount)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if seconds <= 0:
            raise ValueError(f"{where}: duration must be more than 0")
        if not re.fullmatch(r"[A-Z0-9]{2,10}", currency):
            raise ValueError(f"{where}: currency '{currency}' is not a code like USDT or USD")
        if currency == STARS and value != 0 and (value != value.to_integral() or not 1 <= value <= MAX_STARS):
            raise ValueError(f"{where}: a price in Telegram Stars (XTR) is a whole number from 1 to {MAX_STARS}")
        plans.append(Plan(plan_id, seconds, value, currency, title))
    return tuple(plans)


def _choice(*options: str) -> Callable[[str], str]:
    def convert(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"'{text}' is not one of: {', '.join(options)}")
        return value
    return convert


def _url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"'{text}' is not an http(s) URL without query")
    return text.strip().rstrip("/")


def _optional_url(text: str) -> str:
    return _url(text) if text.strip() else ""


def _webhook_url(text: str) -> str:
    """The public base URL: CryptoBot is given it plus WEBHOOK_PATH (empty: polling only)."""
    url = _optional_url(text)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if host == PLACEHOLDER_DOMAIN or host.endswith("." + PLACEHOLDER_DOMAIN):
        raise ValueError(f"{PLACEHOLDER_DOMAIN} is the example's placeholder; write your own domain or leave it empty")
    path = parts.path.rstrip("/")
    if WEBHOOK_PATH in path or path.endswith("/webhook"):
        raise ValueError(f"give the base URL only, e.g. https://club.example.com; ClubBot adds {WEBHOOK_PATH}")
    return url


def _assets(text: str) -> tuple[str, ...]:
    items = tuple(item.strip() for item in text.split(",") if item.strip())
    for item in items:
        if not re.fullmatch(r"[A-Z0-9]{2,10}", item):
            raise ValueError(f"'{item}' is not an asset code like USDT")
        if item in FIAT_CURRENCIES:
            raise ValueError(f"'{item}' is a fiat currency, not a crypto asset")
    return items


def _host(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("is empty")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", value):
            raise ValueError(f"'{text}' is not an IP address or host name") from None
    return value


def _trusted_proxy(text: str) -> str:
    value = text.strip()
    if value in ("", "*"):
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"'{text}' is not an IP address, '*' or empty") from None
    return value


def _port(text: str) -> int:
    if not re.fullmatch(r"\d{1,5}", text.strip()) or not 1 <= int(text) <= 65535:
        raise ValueError(f"'{text}' is not a port from 1 to 65535")
    return int(text)


def _path(text: str) -> Path:
    if not text.strip():
        raise ValueError("is empty")
    return Path(text.strip())


def _log_level(text: str) -> str:
    return _choice("debug", "info", "warning", "error")(text).upper()


def _duration(minimum: int, maximum: int = MAX_DURATION) -> Callable[[str], int]:
    def convert(text: str) -> int:
        seconds = parse_duration(text, maximum)
        if seconds < minimum:
            raise ValueError(f"'{text}' is shorter than {format_duration(minimum) if minimum else '0'}")
        return seconds
    return convert


def _optional_duration(text: str) -> int | None:
    """A duration of at least a second, or None for an empty value (the feature is off)."""
    if not text.strip():
        return None
    return _duration(1, MAX_REFERRAL_BONUS)(text.strip())


def _durations(text: str) -> tuple[int, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    values = sorted({parse_duration(item) for item in items}, reverse=True)
    if any(v <= 0 for v in values):
        raise ValueError("each reminder must be more than 0 before expiry")
    return tuple(values)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None
    if not 0 < value <= 1000:
        raise ValueError(f"'{text}' must be more than 0 and at most 1000 calls per second")
    return value


# name -> (converter, default). Order is the README's.
SETTINGS: dict[str, tuple[Callable[[str], Any], Any]] = {
    "BOT_TOKEN": (_token, REQUIRED),
    "CRYPTO_PAY_TOKEN": (_token, REQUIRED),
    "CLUB_CHAT_IDS": (_int_list, REQUIRED),
    "PLANS": (_plans, REQUIRED),
    "ADMIN_IDS": (_admin_ids, ""),
    "CRYPTO_PAY_NETWORK": (_choice("mainnet", "testnet"), "mainnet"),
    "CRYPTO_PAY_API_URL": (_optional_url, ""),
    "TELEGRAM_API_URL": (_url, "https://api.telegram.org"),
    "ACCEPTED_ASSETS": (_assets, ""),
    "WEBHOOK_HOST": (_host, "127.0.0.1"),
    "WEBHOOK_PORT": (_port, "8000"),
    "WEBHOOK_URL": (_webhook_url, ""),
    "TRUSTED_PROXY": (_trusted_proxy, "127.0.0.1"),
    "DATABASE_PATH": (_path, "data/clubbot.db"),
    "LOG_FILE": (_path, "logs/clubbot.log"),
    "LOG_LEVEL": (_log_level, "INFO"),
    "POLL_INTERVAL": (_duration(1, MAX_INTERVAL), "30s"),
    "SWEEP_INTERVAL": (_duration(1, MAX_INTERVAL), "60s"),
    "INVOICE_TTL": (_duration(60, MAX_INVOICE_TTL), "1h"),
    "REMIND_BEFORE": (_durations, "3d,1d"),
    "GRACE_PERIOD": (_duration(0), "0s"),
    "REFERRAL_BONUS": (_optional_duration, ""),
    "TELEGRAM_RATE": (_rate, "25"),
    "DEFAULT_LANGUAGE": (_choice("ru", "en"), "ru"),
}


@dataclass(frozen=True)
class Config:
    bot_token: str
    crypto_pay_token: str
    club_chat_ids: tuple[int, ...]
    plans: tuple[Plan, ...]
    admin_ids: frozenset[int]
    crypto_pay_network: str
    crypto_pay_api_url: str
    telegram_api_url: str
    accepted_assets: tuple[str, ...]
    webhook_host: str
    webhook_port: int
    webhook_url: str
    trusted_proxy: str
    database_path: Path
    log_file: Path
    log_level: str
    poll_interval: int
    sweep_interval: int
    invoice_ttl: int
    remind_before: tuple[int, ...]
    grace_period: int
    referral_bonus: int | None
    telegram_rate: float
    default_language: str

    def plan(self, plan_id: str) -> Plan | None:
        return next((p for p in self.plans if p.id == plan_id), None)

    @property
    def webhook_path(self) -> str:
        return WEBHOOK_PATH

    @property
    def public_webhook_url(self) -> str:
        return f"{self.webhook_url}{self.webhook_path}" if self.webhook_url else ""

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.bot_token, self.crypto_pay_token)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a .env file as systemd's EnvironmentFile= does, refusing what it would read otherwise.

    The service takes its values from systemd, the owner's tools from here: were the two to
    differ, `check` would pass a file that the service reads another way. Both take KEY=VALUE
    lines, comments on lines of their own ('#' or ';'), and values plain, in '...', or in "..."
    (with the escapes \\" \\\\ \\` \\$). Refused, naming the line, is what systemd reads
    otherwise than it looks: a comment after a value (systemd keeps it in the value), text
    after a closing quote (added to it), `export` and lines without '=' (skipped), a backslash
    outside quotes (dropped, or joining two lines), a comment ending in one (systemd before
    v254 skips the next line with it) and a quote left open at the end of its line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "is not UTF-8 text") from None
    except OSError as exc:  # unreadable by this user, say: one line, as for any other mistake
        raise ConfigError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        where, line = f"{path}:{number}", raw.strip(_ENV_SPACE)
        if line[:1] in ("#", ";"):
            if line.endswith("\\"):
                raise ConfigError(where, "a comment ending in a backslash, with which systemd (before v254) "
                                         "skips the next line too; remove the backslash")
            continue
        if not line:
            continue
        key, sep, rest = line.partition("=")
        key = key.rstrip(_ENV_SPACE)
        if not sep or not _ENV_KEY.fullmatch(key):
            exported = key.split()[:1] == ["export"]
            raise ConfigError(where, "expected KEY=VALUE" + (", without 'export' (systemd skips such a line)"
                                                            if exported else ""))
        values[key] = _env_value(rest, key, where)
    return values


def _env_value(text: str, key: str, where: str) -> str:
    """The value after KEY= on one line of a .env file, as systemd reads it (see read_env_file)."""
    value = text.strip(_ENV_SPACE)
    if value[:1] in ("'", '"'):
        value, end = _quoted(value, key, where)
        if text.strip(_ENV_SPACE)[end:].strip(_ENV_SPACE):
            raise ConfigError(where, f"{key}: text after the closing quote, which systemd would add to the "
                                     f"value; put a comment on a line of its own")
        return value
    if re.search(r"\s#", text.rstrip(_ENV_SPACE)):
        raise ConfigError(where, f"{key}: a comment after the value, which systemd would read as part of it; "
                                 f"move the comment to its own line (or quote the value if '#' belongs to it)")
    if "\\" in value:
        raise ConfigError(where, f"{key}: a backslash outside quotes, which systemd drops (or, at the end, "
                                 f"joins the next line); put the value in single quotes")
    return value


def _quoted(text: str, key: str, where: str) -> tuple[str, int]:
    """The value of the '...' or "..." that `text` begins with, and the index after its closing quote."""
    quote, chars, index = text[0], [], 1
    while index < len(text):
        char = text[index]
        if char == quote:
            return "".join(chars), index + 1
        if char == "\\" and quote == '"' and index + 1 < len(text):
            escaped = text[index + 1]
            chars.append(escaped if escaped in _ENV_ESCAPABLE else char + escaped)
            index += 2
            continue
        chars.append(char)
        index += 1
    raise ConfigError(where, f"{key}: the quote is not closed on this line")


def load(environ: dict[str, str] | None = None, env_file: Path | str | None = ".env") -> Config:
    """Build the Config from `environ` (default os.environ) over the `.env` file."""
    environ = dict(os.environ if environ is None else environ)
    file_values: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        file_values = read_env_file(Path(env_file))
        for key in file_values:
            if key not in SETTINGS and not key.startswith(FOREIGN_ENV_PREFIXES):
                raise ConfigError(key, f"in {env_file} is not a ClubBot setting (a typo?)")
    values: dict[str, Any] = {}
    for name, (convert, default) in SETTINGS.items():
        raw = environ.get(name)
        if raw is None:
            raw = file_values.get(name)
        if raw is None or (raw.strip() == "" and default is REQUIRED):
            if default is REQUIRED:
                raise ConfigError(name, "is required but not set")
            raw = default
        try:
            values[name.lower()] = convert(raw)
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
    if not values["crypto_pay_api_url"]:
        values["crypto_pay_api_url"] = NETWORK_URLS[values["crypto_pay_network"]]
    return Config(**values)
