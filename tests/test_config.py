from decimal import Decimal

import pytest
from conftest import ROOT, start_process

import config as config_module
from config import ConfigError, parse_duration


def test_it_parses_durations_in_every_unit():
    assert parse_duration("30s") == 30
    assert parse_duration("5m") == 300
    assert parse_duration("1h") == 3600
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("0") == 0
    for bad in ("", "30", "1.5h", "-1d", "1w", "d", "0s0"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_it_reads_plans_with_decimal_amounts_and_optional_titles(make_config):
    cfg = make_config(PLANS="month:30d:5.10:USDT:Month: all in, year:365d:50:USD,trial:3d:0:TON")
    month, year, trial = cfg.plans
    assert (month.id, month.duration, month.amount, month.currency, month.title) == (
        "month", 30 * 86400, Decimal("5.10"), "USDT", "Month: all in")
    assert isinstance(month.amount, Decimal)
    assert year.is_fiat and not month.is_fiat
    assert trial.is_trial and trial.title is None


def test_it_fills_defaults_and_picks_the_api_by_network(make_config):
    cfg = make_config(CRYPTO_PAY_API_URL="", CRYPTO_PAY_NETWORK="testnet")
    assert cfg.crypto_pay_api_url == "https://testnet-pay.crypt.bot/api"
    assert cfg.webhook_host == "127.0.0.1"
    assert cfg.remind_before == (3 * 86400, 86400)
    assert cfg.grace_period == 0
    assert cfg.default_language == "ru"
    assert cfg.trusted_proxy == "127.0.0.1"


def test_the_environment_wins_over_the_env_file(tmp_path, env):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nWEBHOOK_PORT=9001\nLOG_LEVEL='debug'\n"
                        'DEFAULT_LANGUAGE="en"\n', encoding="utf-8")
    environ = {k: v for k, v in env.items() if k != "WEBHOOK_PORT"}
    environ["LOG_LEVEL"] = "warning"
    cfg = config_module.load(environ, env_file=env_file)
    assert cfg.webhook_port == 9001
    assert cfg.log_level == "WARNING"
    assert cfg.default_language == "en"


def test_it_refuses_a_typo_in_the_env_file(tmp_path, env):
    env_file = tmp_path / ".env"
    env_file.write_text("WEBHOOK_PROT=9001\n", encoding="utf-8")
    with pytest.raises(ConfigError) as error:
        config_module.load(env, env_file=env_file)
    assert error.value.name == "WEBHOOK_PROT"


@pytest.mark.parametrize("name, value, words", [
    ("BOT_TOKEN", "", "required"),
    ("BOT_TOKEN", "not-a-token", "token"),
    ("CLUB_CHAT_IDS", "-100,abc", "'abc'"),
    ("CLUB_CHAT_IDS", "-100,-100", "twice"),
    ("PLANS", "month:30d:5", "id:duration:amount:currency"),
    ("PLANS", "month:30d:five:USDT", "'five'"),
    ("PLANS", "month:30d:-1:USDT", "0 or more"),
    ("PLANS", "month:0:5:USDT", "more than 0"),
    ("PLANS", "month:30d:5:USDT,month:1d:1:USDT", "twice"),
    ("PLANS", "month:30d:5:usdt", "currency"),
    ("ADMIN_IDS", "12,x", "'x'"),
    ("CRYPTO_PAY_NETWORK", "moonnet", "mainnet"),
    ("TELEGRAM_API_URL", "ftp://x", "http"),
    ("ACCEPTED_ASSETS", "USDT,USD", "fiat"),
    ("WEBHOOK_HOST", "bad host!", "host"),
    ("WEBHOOK_PORT", "70000", "port"),
    ("WEBHOOK_URL", "your-domain.com", "http"),
    ("TRUSTED_PROXY", "nginx", "IP"),
    ("LOG_LEVEL", "loud", "debug"),
    ("POLL_INTERVAL", "0", "shorter"),
    ("INVOICE_TTL", "40d", "longer"),
    ("REMIND_BEFORE", "3d,soon", "'soon'"),
    ("GRACE_PERIOD", "-1d", "duration"),
    ("TELEGRAM_RATE", "0", "more than 0"),
    ("DEFAULT_LANGUAGE", "de", "ru"),
])
def test_a_bad_value_names_the_variable_and_the_problem(make_config, name, value, words):
    with pytest.raises(ConfigError) as error:
        make_config(**{name: value})
    assert error.value.name == name
    assert words in str(error.value)


@pytest.mark.parametrize("name, value", [
    ("PLANS", ""), ("WEBHOOK_PORT", "http"), ("SWEEP_INTERVAL", "1x"), ("CRYPTO_PAY_TOKEN", "x")])
def test_start_up_stops_with_one_line_and_exit_code_2(tmp_path, env, name, value):
    for command in (["clubbot.py"], ["clubbot.py", "bot"], ["webhook_server.py"]):
        process = start_process([str(ROOT / command[0]), *command[1:]], {**env, name: value}, tmp_path)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"clubbot: config error: {name}:")
        assert "Traceback" not in err


@pytest.mark.parametrize("value, words", [
    ("https://club.example.org/webhook/cryptobot", "give the base URL only, e.g. https://club.example.com; "
                                                   "ClubBot adds /webhook/cryptobot"),
    ("https://club.example.org/webhook/cryptobot/", "give the base URL only"),
    ("https://club.example.org/webhook", "give the base URL only"),
    ("https://your-domain.com", "your-domain.com is the example's placeholder; write your own domain or leave "
                                "it empty"),
    ("https://www.your-domain.com/", "placeholder"),
])
def test_webhook_url_is_a_base_url_of_ones_own(make_config, value, words):
    with pytest.raises(ConfigError) as error:
        make_config(WEBHOOK_URL=value)
    assert error.value.name == "WEBHOOK_URL" and words in str(error.value)
    assert make_config(WEBHOOK_URL="https://club.example.org/").public_webhook_url == (
        "https://club.example.org/webhook/cryptobot")
    assert make_config(WEBHOOK_URL="https://example.org/club").webhook_url == "https://example.org/club"


# .env is read as systemd's EnvironmentFile= reads it (the service's values come from systemd),
# or refused with the line, when systemd would read it otherwise than it looks. The values were
# checked against systemd 252's own parser (load_env_file in libsystemd-shared).

def read_env(tmp_path, text: str) -> dict[str, str]:
    env_file = tmp_path / ".env"
    env_file.write_text(text, encoding="utf-8")
    return config_module.read_env_file(env_file)


@pytest.mark.parametrize("text, value", [
    ("V=plain", "plain"),
    ("  V = spaced out  \t", "spaced out"),
    ("V=a  b", "a  b"),  # interior whitespace kept
    ("V=8000#no-space", "8000#no-space"),  # '#' begins a comment only at the start of a line
    ("V='single # \\ $x'", "single # \\ $x"),
    ('V="a \\"b\\" \\\\ \\$ \\n"', 'a "b" \\ $ \\n'),  # shell escapes, others kept whole
    ('V="quoted"   ', "quoted"),
    ("V=a'b'", "a'b'"),  # a quote after the first character is kept as it is
    ("V=", ""),
    ("V=crlf\r", "crlf"),
])
def test_values_read_as_systemd_reads_them(tmp_path, text, value):
    assert read_env(tmp_path, f"# a comment\n; another\n\n{text}\n") == {"V": value}


@pytest.mark.parametrize("text, words", [
    ("WEBHOOK_PORT=8000 # the port", "WEBHOOK_PORT: a comment after the value, which systemd would read as part "
                                     "of it; move the comment to its own line"),
    ("ADMIN_IDS=\t# none yet", "a comment after the value"),
    ('V="en"  # inline comment', "text after the closing quote"),
    ("V='a' 'b'", "text after the closing quote"),
    ("export V=1", "expected KEY=VALUE, without 'export' (systemd skips such a line)"),
    ("V", "expected KEY=VALUE"),
    ("1V=x", "expected KEY=VALUE"),
    ("V=a\\b", "a backslash outside quotes"),
    ("V=joined \\", "a backslash outside quotes"),
    ("# a comment \\", "a comment ending in a backslash"),
    ("V='open", "the quote is not closed on this line"),
    ('V="open \\"', "the quote is not closed on this line"),
])
def test_what_systemd_reads_otherwise_is_refused_with_its_line(tmp_path, text, words):
    with pytest.raises(ConfigError) as error:
        read_env(tmp_path, f"# line 1\nBOT_TOKEN=1:x\n{text}\nV2=after\n")
    assert error.value.name == f"{tmp_path / '.env'}:3"
    assert words in str(error.value)


def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"V=\xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        config_module.read_env_file(env_file)


def test_start_up_names_the_line_of_an_inline_comment(tmp_path, env):
    (tmp_path / ".env").write_text("# ClubBot\nWEBHOOK_PORT=8000 # the port\n", encoding="utf-8")
    environ = {k: v for k, v in env.items() if k != "WEBHOOK_PORT"}
    process = start_process([str(ROOT / "clubbot.py"), "check"], environ, tmp_path)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2, err
    assert err.strip() == ("clubbot: config error: .env:2: WEBHOOK_PORT: a comment after the value, which "
                           "systemd would read as part of it; move the comment to its own line (or quote the "
                           "value if '#' belongs to it)")


def test_the_example_env_reads_as_systemd_would_and_says_where_the_database_is(make_config):
    example = ROOT / ".env.example"
    values = config_module.read_env_file(example)
    make_config(WEBHOOK_URL=values["WEBHOOK_URL"])  # no placeholder that start-up refuses
    assert "\n# DATABASE_PATH=/var/lib/clubbot/clubbot.db\n" in example.read_text(encoding="utf-8")


def test_an_env_file_this_user_cannot_read_is_one_line(tmp_path, monkeypatch):
    """A .env left root-only (by `sudo ... setup`, say), read by the service's user."""
    from pathlib import Path

    import config

    env_file = tmp_path / ".env"
    env_file.write_text("BOT_TOKEN=1\n")
    real = Path.read_text

    def refused(self, *args, **kwargs):
        if self == env_file:
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refused)
    with pytest.raises(config.ConfigError, match="cannot be read: Permission denied"):
        config.read_env_file(env_file)
