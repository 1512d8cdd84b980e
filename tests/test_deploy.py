"""Deployment: the systemd units pass systemd-analyze; nginx with TLS in front of the real server."""
import http.client
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys

import pytest
from builders import paid_invoice, paid_update
from conftest import PAY_TOKEN, ROOT, free_port, wait_for_port

from cryptopay import signature
from tg import LONG_POLL_SECONDS

UNITS = ["clubbot.service", "clubbot-bot.service", "clubbot-webhook.service"]
needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"),
                                 reason="no nginx here (.ci/run installs it)")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = ipv6_loopback()


def unit_text(name: str) -> str:
    return (ROOT / "systemd" / name).read_text(encoding="utf-8")


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_runs_clubbot_as_its_own_user_with_state_logs_and_restarts(name):
    unit = settings(unit_text(name))
    assert unit["User"] == ["clubbot"] and unit["Group"] == ["clubbot"]
    assert unit["EnvironmentFile"] == ["/opt/clubbot/.env"]
    assert unit["StateDirectory"] == ["clubbot"] and unit["LogsDirectory"] == ["clubbot"]
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["TimeoutStopSec"][0]) > 10
    if name != "clubbot-webhook.service":
        assert int(unit["TimeoutStopSec"][0]) > LONG_POLL_SECONDS
    assert "/var/lib/clubbot/clubbot.db" in unit["Environment"][0]
    expected = {"clubbot.service": "clubbot.py run", "clubbot-bot.service": "clubbot.py bot",
                "clubbot-webhook.service": "webhook_server.py"}[name]
    assert unit["ExecStart"][0].endswith(expected)


@needs_systemd
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verifies_each_unit_and_rates_it_at_most_2(tmp_path, name):
    # verify checks that ExecStart exists: point the copy at this checkout and this python.
    text = unit_text(name).replace("/opt/clubbot/.venv/bin/python", sys.executable).replace(
        "/opt/clubbot", str(ROOT))
    unit = tmp_path / name
    unit.write_text(text, encoding="utf-8")
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", str(unit)],
                              capture_output=True, text=True, timeout=60)
    assert security.returncode == 0, security.stdout + security.stderr
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout + security.stderr)
    assert exposure and float(exposure.group(1)) <= 2.0, security.stdout


def test_the_readme_shows_the_nginx_site_that_is_tested():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    site = (ROOT / "nginx" / "clubbot.conf").read_text(encoding="utf-8")
    assert site in readme
    for line in ("listen 80;", "listen [::]:80;", "listen 443 ssl;", "listen [::]:443 ssl;",
                 "location /webhook/ {", "proxy_set_header X-Forwarded-For $remote_addr;",
                 "proxy_set_header X-Forwarded-Proto $scheme;", "location = /health {"):
        assert line in site


@pytest.fixture
def nginx(tmp_path, server):
    """A real nginx on 127.0.0.1 with a self-signed certificate, in front of the `server` fixture."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    app_port = int(server.rsplit(":", 1)[1])
    port = free_port()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=60)
    site = (ROOT / "nginx" / "clubbot.conf").read_text(encoding="utf-8")
    site = site.split("server {", 2)
    site = "server {" + site[2]  # the TLS server block (the port-80 redirect is not needed here)
    # The shipped site listens on [::] too. Here it is [::1] on the same port; on a machine
    # without IPv6 nginx could not bind it at all, so that line is dropped (the file keeps it).
    ipv6_listen = f"listen [::1]:{port} ssl;" if HAS_IPV6 else ""
    site = (site.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
                .replace("listen [::]:443 ssl;", ipv6_listen)
                .replace("/etc/letsencrypt/live/your-domain.com/fullchain.pem", str(tmp_path / "cert.pem"))
                .replace("/etc/letsencrypt/live/your-domain.com/privkey.pem", str(tmp_path / "key.pem"))
                .replace("http://127.0.0.1:8000", f"http://127.0.0.1:{app_port}"))
    for folder in ("client", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / folder).mkdir()
    user = "user root;\n" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(f"""{user}daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/client;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    {site}
}}
""", encoding="utf-8")
    process = subprocess.Popen([binary, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def https(port: int, method: str, path: str, body: bytes | None = None, headers=None, host: str = "127.0.0.1"):
    """A request to nginx over TLS, by default from 127.0.0.5: a client that is not the proxy."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    source = ("127.0.0.5", 0) if host == "127.0.0.1" else None
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10, source_address=source)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read()


@needs_nginx
def test_a_signed_webhook_and_a_health_check_pass_through_nginx_over_https(app, cryptopay, nginx, caplog):
    body = paid_update(paid_invoice(app, cryptopay))
    with caplog.at_level(logging.INFO, logger="clubbot.http"):
        status, answer = https(nginx, "POST", "/webhook/cryptobot", body, {
            "Content-Type": "application/json", "crypto-pay-api-signature": signature(PAY_TOKEN, body)})
        assert (status, answer) == (200, b'{"ok": true}')
        status, answer = https(nginx, "GET", "/health")
        assert status == 200 and b'"healthy"' in answer
        status, _ = https(nginx, "GET", "/webhook/cryptobot")
        assert status == 405
        status, _ = https(nginx, "GET", "/admin")
        assert status == 404
    assert app.db.expires_at(501) is not None
    assert "webhook received from 127.0.0.5" in caplog.text  # the client, not the proxy (127.0.0.1)
    assert "from 127.0.0.1" not in caplog.text


@needs_nginx
@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 here: the site's [::] line was left out of nginx's copy")
def test_the_site_answers_over_ipv6_too(nginx):
    status, answer = https(nginx, "GET", "/health", host="::1")
    assert status == 200 and b'"healthy"' in answer
