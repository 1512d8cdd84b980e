"""Helpers for the benchmarks: processes, environments, a keep-alive HTTP load client."""
from __future__ import annotations

import http.client
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

BOT_TOKEN = "123456:BENCH-bot-token-SECRET-part"
PAY_TOKEN = "1234:BENCHTOKEN"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


def base_env(folder: Path, telegram_url: str, cryptopay_url: str, port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "BOT_TOKEN": BOT_TOKEN, "CRYPTO_PAY_TOKEN": PAY_TOKEN, "CLUB_CHAT_IDS": "-1001000000001",
        "PLANS": "month:30d:5:USDT,year:365d:50:USDT", "ADMIN_IDS": "9000",
        "CRYPTO_PAY_API_URL": cryptopay_url, "TELEGRAM_API_URL": telegram_url,
        "WEBHOOK_PORT": str(port), "DATABASE_PATH": str(folder / "clubbot.db"),
        "LOG_FILE": str(folder / "clubbot.log"), **extra,
    }


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """A process whose output goes to a file in `cwd` (a pipe nobody reads would stall it)."""
    output = open(cwd / f"{Path(args[0]).stem}-{time.monotonic_ns()}.out", "w")
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=output, stderr=output)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def load(port: int, requests: list[tuple[str, str, bytes, dict]], clients: int) -> dict:
    """Send `requests` over `clients` keep-alive connections at once; statuses and latencies."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    queue = list(reversed(requests))
    barrier = threading.Barrier(clients + 1)

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        codes: dict[int, int] = {}
        barrier.wait()
        while True:
            with lock:
                if not queue:
                    break
                method, path, body, headers = queue.pop()
            started = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            codes[response.status] = codes.get(response.status, 0) + 1
        connection.close()
        with lock:
            latencies.extend(mine)
            for code, count in codes.items():
                statuses[code] = statuses.get(code, 0) + count

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies), "seconds": elapsed, "rps": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "statuses": statuses,
    }
