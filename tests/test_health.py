"""/health and `check` see a worker that died or is stuck, in its own process and from another one."""
import argparse
import json
import signal
import sqlite3
import threading
import time

import pytest
from builders import message
from conftest import FakeClock, InProcess, start_process, wait_for
from test_processes import CLUBBOT, health, stop

import clubbot
from db import Database
from health import KEY_PREFIX, SHARE_EVERY, SHARED_MARGIN, Heartbeats, silence_bounds
from outbox import Sender
from updates import HANDLER_SILENCE, HANDLER_THREADS
from webhook_server import make_wsgi_app

WORKERS = ("sender", "poller", "sweeper", "updates")
# The update poller's handler threads are watched too, in a running bot process.
HANDLERS = {f"handler-{n}": HANDLER_SILENCE for n in range(1, HANDLER_THREADS + 1)}
OTHER_PID = 4242


def get_health(app) -> tuple[int, dict]:
    """GET /health through the WSGI app, in process; the status code and the JSON body."""
    response = InProcess(make_wsgi_app(app), app).get("/health")
    return response.status_code, response.json()


@pytest.fixture
def ticks():
    """The heartbeats' own clock (monotonic and wall alike), apart from the App's product clock."""
    return FakeClock(1_000_000)


@pytest.fixture
def live_threads():
    """Threads that stay alive until the test ends, one per worker name."""
    release = threading.Event()
    threads = {name: threading.Thread(target=release.wait, name=name, daemon=True) for name in WORKERS}
    for thread in threads.values():
        thread.start()
    yield threads
    release.set()


@pytest.fixture
def beating(app, ticks, live_threads):
    """The App of a process running the four workers, as serve() registers them."""
    app.heartbeats = Heartbeats(monotonic=ticks.monotonic, wall=ticks.monotonic)
    bounds = silence_bounds(app.config)
    for name, thread in live_threads.items():
        app.heartbeats.register(name, bounds[name], thread)
    return app


def bot_process(db_path, ticks, pid=OTHER_PID) -> Heartbeats:
    """The heartbeats of a bot process: another pid, its own connection, writing to the database."""
    other = Heartbeats(monotonic=ticks.monotonic, wall=ticks.monotonic, pid=pid)
    other.share(Database(db_path))
    return other


def rows(app) -> dict[str, dict]:
    return {key.removeprefix(KEY_PREFIX): json.loads(value) for key, value in app.db.states(KEY_PREFIX).items()}


# --- in the process that runs the workers ---

def test_health_is_200_while_every_worker_beats(beating, ticks):
    for _ in range(5):
        ticks.advance(60)
        for name in WORKERS:
            beating.heartbeat(name)
        assert get_health(beating) == (200, {"status": "healthy", "timestamp": pytest.approx(time.time(), abs=5)})


def test_health_names_a_worker_whose_thread_has_ended_at_once(beating, ticks):
    ended = threading.Thread(target=lambda: None, name="sender")
    ended.start()
    ended.join()
    beating.heartbeats.register("sender", 600, ended)
    status, body = get_health(beating)
    assert status == 503
    assert body["status"] == "unhealthy" and isinstance(body["timestamp"], int)
    assert body["error"] == "sender: stopped"


def test_health_names_a_worker_silent_past_its_bound_and_not_before(beating, ticks):
    bound = silence_bounds(beating.config)["poller"]
    assert 300 <= bound <= 900  # generous, not a hair trigger
    ticks.advance(bound - 1)
    for name in ("sender", "sweeper", "updates"):
        beating.heartbeat(name)
    assert get_health(beating)[0] == 200
    ticks.advance(2)
    status, body = get_health(beating)
    assert status == 503
    assert body["error"] == f"poller: no sign of life for {bound + 1} s"
    beating.heartbeat("poller")
    assert get_health(beating)[0] == 200


def test_health_names_every_worker_that_is_wrong(beating, ticks):
    ticks.advance(10_000)
    status, body = get_health(beating)
    assert status == 503
    assert [part.split(":")[0] for part in body["error"].split("; ")] == sorted(WORKERS)


def test_workers_that_ended_because_the_process_is_stopping_are_not_reported(beating):
    ended = threading.Thread(target=lambda: None, name="sender")
    ended.start()
    ended.join()
    beating.heartbeats.register("sender", 600, ended)
    beating.stop.set()
    assert get_health(beating)[0] == 200


class Hurried(threading.Event):
    """An event whose timed waits last `share` of what is asked: a loop's same rounds, sooner."""

    def __init__(self, share: float):
        super().__init__()
        self.share = share

    def wait(self, timeout=None):
        return super().wait(None if timeout is None else timeout * self.share)


def test_a_loop_that_raises_keeps_beating_but_a_thread_that_dies_is_reported(app, monkeypatch):
    calls = []

    def fail(*args, **kwargs):
        calls.append(time.monotonic())
        raise RuntimeError("a bug in one round")

    monkeypatch.setattr(Sender, "run_once", fail)
    app.outbox_ready = Hurried(0.25)  # the sender waits 1 s between failed rounds: here 0.25 s
    thread = threading.Thread(target=Sender(app).run, name="sender", daemon=True)
    thread.start()
    app.heartbeats.register("sender", 0.75, thread)  # a round and half a second more
    wait_for(lambda: len(calls) >= 7, timeout=10)  # 1.5 s
    assert thread.is_alive()
    assert get_health(app)[0] == 200  # well past the bound since it started: it kept beating

    class Broken:
        def wait(self, timeout=None):
            raise RuntimeError("outside the loop's guard")

        def set(self):
            pass

    monkeypatch.setattr(threading, "excepthook", lambda args: None)
    app.outbox_ready = Broken()
    thread.join(5)
    assert not thread.is_alive()
    assert get_health(app) == (503, {"status": "unhealthy", "timestamp": pytest.approx(time.time(), abs=5),
                                     "error": "sender: stopped"})


# --- beats written for other processes ---

def test_a_bot_process_writes_its_beats_at_most_every_ten_seconds(app, ticks):
    other = bot_process(app.db.path, ticks)
    other.register("sender", 600)
    first = rows(app)["sender"]
    assert first == {"at": 1_000_000, "bound": 600, "pid": OTHER_PID}
    ticks.advance(SHARE_EVERY - 1)
    other.beat("sender")
    assert rows(app)["sender"] == first
    ticks.advance(1)
    other.beat("sender")
    assert rows(app)["sender"]["at"] == 1_000_000 + SHARE_EVERY


def test_workers_registered_before_sharing_began_are_written_when_it_begins(app, ticks):
    """The update handlers register themselves from their own thread, which may be before the
    process starts sharing: their rows must not wait SHARE_EVERY for the next beat."""
    other = Heartbeats(monotonic=ticks.monotonic, wall=ticks.monotonic, pid=OTHER_PID)
    other.register("handler-1", HANDLER_SILENCE)
    other.beat("handler-1")
    assert rows(app) == {}
    other.share(Database(app.db.path))
    assert rows(app) == {"handler-1": {"at": 1_000_000, "bound": HANDLER_SILENCE, "pid": OTHER_PID}}


def test_the_webhook_server_reports_a_bot_process_whose_beats_grew_old(app, ticks):
    other = bot_process(app.db.path, ticks)
    bounds = silence_bounds(app.config)
    for name in WORKERS:
        other.register(name, bounds[name], threading.current_thread())
    # The webhook-only process: no worker of its own, and its wall clock is the same as the bot's.
    app.heartbeats = Heartbeats(monotonic=ticks.monotonic, wall=ticks.monotonic)
    assert get_health(app)[0] == 200
    ticks.advance(bounds["updates"] + SHARED_MARGIN + 1)
    for name in ("sender", "poller", "sweeper"):
        other.beat(name)
    status, body = get_health(app)
    assert status == 503
    assert body["error"] == f"updates: no sign of life for {bounds['updates'] + SHARED_MARGIN + 1} s " \
                            f"(process {OTHER_PID})"
    other.beat("updates")
    assert get_health(app)[0] == 200


def test_a_clean_stop_deletes_its_beats_and_writes_no_more(app, ticks):
    other = bot_process(app.db.path, ticks)
    for name in WORKERS:
        other.register(name, 300)
    assert set(rows(app)) == set(WORKERS)
    other.forget()
    assert rows(app) == {}
    ticks.advance(3600)
    other.beat("sender")  # a worker left running at stop, waking up late
    assert rows(app) == {}
    app.heartbeats = Heartbeats(monotonic=ticks.monotonic, wall=ticks.monotonic)
    assert get_health(app)[0] == 200


def test_a_clean_stop_leaves_the_beats_of_a_successor_alone(app, ticks):
    old = bot_process(app.db.path, ticks, pid=100)
    old.register("sender", 600)
    new = bot_process(app.db.path, ticks, pid=200)
    new.register("sender", 600)
    old.forget()  # the old process finishing its stop after the new one started
    assert rows(app)["sender"]["pid"] == 200


def test_the_process_running_the_workers_trusts_its_own_view_over_their_rows(beating, ticks):
    other = bot_process(beating.db.path, ticks)
    other.register("sender", 10)
    ticks.advance(3600)
    for name in WORKERS:
        beating.heartbeat(name)
    assert get_health(beating)[0] == 200


def test_health_is_503_naming_the_database_when_it_does_not_answer(app, tmp_path):
    app.db = Database(tmp_path / "missing-folder" / "x.db")
    status, body = get_health(app)
    assert status == 503 and body["error"].startswith("database: ")


def test_a_worker_that_cannot_write_its_beat_keeps_running(app, ticks, caplog):
    other = Heartbeats(monotonic=ticks.monotonic, wall=ticks.monotonic, pid=OTHER_PID)
    other.share(Database(app.db.path.parent / "missing-folder" / "x.db"))
    other.register("sender", 600)  # logs, does not raise
    other.beat("sender")
    assert "sign of life not written" in caplog.text


# --- check ---

def check(make_config, capsys) -> tuple[int, list[str]]:
    code = clubbot.cmd_check(make_config(), argparse.Namespace())
    return code, capsys.readouterr().out.splitlines()


def test_check_notes_that_no_running_bot_was_found_before_the_first_start(make_config, capsys):
    code, lines = check(make_config, capsys)
    assert code == 0, lines
    assert any(line.startswith("note  no running bot found (no database yet): DATABASE_PATH is ") for line in lines)
    assert not make_config().database_path.exists()  # check does not create it


def test_check_notes_that_no_running_bot_was_found_in_a_database_without_beats(app, make_config, capsys):
    code, lines = check(make_config, capsys)
    assert code == 0, lines
    assert "note  no running bot found (it writes signs of life to the database while it runs)" in lines


def test_check_says_ok_or_fail_with_the_age_of_each_beat(app, make_config, capsys):
    now = time.time()
    other = Heartbeats(wall=lambda: now - 5, pid=OTHER_PID)
    other.share(app.db)
    other.register("sender", 600)
    stale = Heartbeats(wall=lambda: now - 1000, pid=OTHER_PID)
    stale.share(app.db)
    stale.register("poller", 420)
    code, lines = check(make_config, capsys)
    assert code == 1
    assert f"ok    worker sender: a sign of life 5 s ago (process {OTHER_PID})" in lines
    assert (f"FAIL  worker poller: no sign of life for 1000 s (process {OTHER_PID}): hung, or killed without "
            "a clean stop (see the log)") in lines
    assert lines[-1] == "1 problem(s) found."


# --- the real processes ---

@pytest.mark.parametrize("args", [[CLUBBOT], [CLUBBOT, "bot"]], ids=["all-in-one", "bot"])
def test_a_running_process_writes_its_workers_beats_and_deletes_them_at_a_clean_stop(tmp_path, env, telegram,
                                                                                     args, app):
    process = start_process(args, env, tmp_path)
    try:
        if args == [CLUBBOT]:
            wait_for(lambda: health(int(env["WEBHOOK_PORT"])), timeout=15)
        found = wait_for(lambda: set(rows(app)) == {*WORKERS, *HANDLERS} and rows(app), timeout=15)
        assert {row["pid"] for row in found.values()} == {process.pid}
        assert {name: row["bound"] for name, row in found.items()} == {**silence_bounds(app.config), **HANDLERS}
        if args == [CLUBBOT]:
            assert health(int(env["WEBHOOK_PORT"]))
        code, _, err = stop(process, signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0, err
    assert rows(app) == {}


@pytest.mark.slow
def test_every_worker_of_a_running_bot_process_keeps_beating(tmp_path, env, telegram, app):
    process = start_process([CLUBBOT, "bot"], {**env, "SWEEP_INTERVAL": "1s"}, tmp_path)
    try:
        first = wait_for(lambda: set(rows(app)) == {*WORKERS, *HANDLERS} and rows(app), timeout=15)
        deadline = time.monotonic() + 30
        late = set(WORKERS)
        while late and time.monotonic() < deadline:
            telegram.push_update(message("/status"))  # ends the update poller's long poll
            time.sleep(1)  # a wait on the condition, paced: a beat is written at most every SHARE_EVERY s
            late = {name for name, row in rows(app).items() if row["at"] <= first[name]["at"]}
        assert late == set(), "no sign of life written again by: " + ", ".join(sorted(late))
        assert stop(process)[0] == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_killed_bot_process_is_reported_by_the_webhook_server_once_its_beats_grow_old(tmp_path, env, telegram,
                                                                                      app):
    process = start_process([CLUBBOT, "bot"], env, tmp_path)
    try:
        wait_for(lambda: set(rows(app)) == {*WORKERS, *HANDLERS}, timeout=15)
        process.kill()
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert set(rows(app)) == {*WORKERS, *HANDLERS}  # no clean stop: they stay
    assert get_health(app)[0] == 200  # still within their bounds
    app.heartbeats = Heartbeats(wall=lambda: time.time() + 3600)  # an hour later
    status, body = get_health(app)
    assert status == 503
    assert [part.split(":")[0] for part in body["error"].split("; ")] == sorted({*WORKERS, *HANDLERS})
    assert f"(process {process.pid})" in body["error"]


def test_state_rows_of_other_kinds_are_not_taken_for_beats(app):
    conn = sqlite3.connect(app.db.path)
    conn.execute("INSERT INTO state (key, value) VALUES ('heartbeat', 'x'), ('heartbeat;', 'y'), ('rights:1', 'bad')")
    conn.commit()
    assert app.db.states(KEY_PREFIX) == {}
    assert get_health(app)[0] == 200
