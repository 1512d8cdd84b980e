import io
import logging

import requests
from conftest import BOT_TOKEN, PAY_TOKEN, ROOT, free_port, start_process

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

    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        process = start_process([str(ROOT / "webhook_server.py")], {**env, "WEBHOOK_PORT": str(port)}, tmp_path)
        _, err = process.communicate(timeout=20)
    assert process.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
