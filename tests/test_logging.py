import io
import logging

import requests
from conftest import BOT_TOKEN, PAY_TOKEN, ROOT, start_process

import texts
from runtime import setup_logging


def test_tokens_are_redacted_everywhere_tracebacks_included(make_config, tmp_path):
    cfg = make_config(LOG_FILE=str(tmp_path / "logs" / "x.log"))
    stream = io.StringIO()
    setup_logging(cfg, stream=stream)
    try:
        log = logging.getLogger("clubbot.test")
        try:
            raise requests.ConnectionError(f"Max retries exceeded with url: /bot{BOT_TOKEN}/sendMessage")
        except requests.ConnectionError:
            log.exception("send failed")
        log.info("token %s and key %s", PAY_TOKEN, BOT_TOKEN.split(":")[1])
    finally:
        setup_logging(cfg, stream=io.StringIO())
        logging.getLogger().handlers.clear()
    for text in (stream.getvalue(), (tmp_path / "logs" / "x.log").read_text()):
        assert "send failed" in text and "Traceback" in text and "/bot***/sendMessage" in text
        assert BOT_TOKEN not in text and BOT_TOKEN.split(":")[1] not in text and PAY_TOKEN not in text


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path, env):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = start_process([str(ROOT / "webhook_server.py")], {**env, "WEBHOOK_PORT": str(port)}, tmp_path)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err


def test_the_log_file_rotates_by_size_and_keeps_five(tmp_path):
    from runtime import LogHandler

    path = tmp_path / "clubbot.log"
    handler = LogHandler(path, io.StringIO(), max_bytes=1000, backups=5)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("clubbot.rotation-test")
    log.propagate = False
    log.addHandler(handler)
    try:
        for n in range(200):
            log.warning("line %03d %s", n, "x" * 40)
    finally:
        log.removeHandler(handler)
        handler.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["clubbot.log", "clubbot.log.1", "clubbot.log.2", "clubbot.log.3", "clubbot.log.4",
                     "clubbot.log.5"]
    assert all(p.stat().st_size <= 1000 for p in tmp_path.iterdir())
    assert path.read_text().splitlines()[-1].startswith("line 199")
    assert (tmp_path / "clubbot.log.1").read_text().splitlines()[-1] < path.read_text().splitlines()[0]


def test_log_lines_write_an_expiry_as_a_utc_date(app, cryptopay, caplog):
    from builders import paid

    from payments import buy, log_applied

    caplog.set_level(logging.INFO, logger="clubbot")
    result = paid(app, cryptopay)
    log_applied(result, 1001, "webhook")
    app.db.upsert_member(502, "m502", "Member", "en", app.now())
    buy(app, 502, app.config.plan("trial"), "trial")
    expiry, trial_end = texts.log_date(result.expires_at), texts.log_date(app.now() + 3 * 86400)
    assert expiry == "2027-02-14 08:00 UTC"
    assert f"subscription activated: member 501 until {expiry}" in caplog.text
    assert f"trial started: member 502, plan trial, until {trial_end}" in caplog.text
    assert str(result.expires_at) not in caplog.text
