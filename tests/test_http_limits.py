"""The HTTP server's limits against slow and idle clients, through a real waitress server."""
import re
import resource
import socket
import time

from builders import paid_invoice, paid_update
from conftest import ROOT, health_stays_quick, post_signed

import webhook_server

PARTIAL_REQUEST = b"POST /webhook/cryptobot HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"


def test_150_idle_and_slow_connections_leave_health_and_the_webhook_answering(app, cryptopay, server):
    """At waitress's default limit of 100 connections, the 101st waited for an idle one to time out."""
    invoice = paid_invoice(app, cryptopay)
    host, port = server.removeprefix("http://").split(":")
    held: list[socket.socket] = []
    try:
        for n in range(150):
            sock = socket.create_connection((host, int(port)), timeout=5)
            if n % 3 == 0:  # a third are in the middle of a request, the rest say nothing at all
                sock.sendall(PARTIAL_REQUEST)
            held.append(sock)
        health_stays_quick(server, held[::3])
        started = time.monotonic()
        assert post_signed(server + "/webhook/cryptobot", paid_update(invoice)).status_code == 200
        assert time.monotonic() - started < 1
        assert app.db.subscription(501) is not None
    finally:
        for sock in held:
            sock.close()


def test_the_connection_limit_fits_the_open_files_limit(monkeypatch):
    limits = {4096: webhook_server.CONNECTION_LIMIT, resource.RLIM_INFINITY: webhook_server.CONNECTION_LIMIT,
              1024: (1024 - webhook_server.FDS_RESERVED) // 2}
    for soft, expected in limits.items():
        monkeypatch.setattr(resource, "getrlimit", lambda _which, soft=soft: (soft, soft))
        assert webhook_server.connection_limit() == expected


def test_the_units_that_serve_http_give_it_the_open_files_it_needs():
    needed = 2 * webhook_server.CONNECTION_LIMIT + webhook_server.FDS_RESERVED
    for name in ("clubbot.service", "clubbot-webhook.service"):
        text = (ROOT / "systemd" / name).read_text(encoding="utf-8")
        found = re.findall(r"^LimitNOFILE=(\d+)$", text, flags=re.MULTILINE)
        assert found and int(found[0]) >= needed, name
