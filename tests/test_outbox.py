"""The outbox engine's lanes: a few daemon threads, started once, that end when the app stops."""
import threading

from conftest import wait_for

from outbox import Lanes, Sender


def lanes() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "sender-lane"}


def queue_texts(app, rounds: int, members: int = 8) -> None:
    for n in range(rounds):
        for user in range(members):
            app.db.enqueue("text", 1000 + user, {"text": f"{n}"}, app.now())


def test_the_lanes_are_daemon_threads_started_once_that_end_when_the_app_stops(app, telegram):
    before = lanes()
    sender = Sender(app, lanes=4)
    started = []
    for _ in range(3):
        queue_texts(app, rounds=1)
        assert sender.run_once() == 8
        started.append(lanes() - before)
    assert len(started[0]) == 4 and started[0] == started[1] == started[2]
    assert all(thread.daemon for thread in started[0])
    app.stop.set()
    for thread in started[0]:
        thread.join(5)
    assert not any(thread.is_alive() for thread in started[0])
    assert all([m["text"] for m in telegram.messages_to(1000 + user)] == ["0", "0", "0"] for user in range(8))


def test_the_sender_loop_ends_its_lanes_when_it_stops(app, telegram, monkeypatch):
    monkeypatch.setattr(Lanes, "IDLE_WAIT", 30)  # idle lanes would not see the stop event in time
    before = lanes()
    queue_texts(app, rounds=2)
    loop = threading.Thread(target=Sender(app, lanes=4).run, daemon=True)
    loop.start()
    wait_for(lambda: len(telegram.sent) == 16, timeout=10)
    started = lanes() - before
    assert started
    app.stop.set()
    app.outbox_ready.set()
    loop.join(5)
    assert not loop.is_alive()
    assert not any(thread.is_alive() for thread in started)  # joined by the loop, not left behind


def test_a_sender_stopped_and_started_again_delivers_its_first_round(app, telegram):
    before = lanes()
    sender = Sender(app, lanes=4)
    queue_texts(app, rounds=1)
    assert sender.run_once() == 8
    app.stop.set()
    wait_for(lambda: not lanes() - before)  # idle lanes end on their own
    sender.run()  # the stop event is set: it only ends its lanes, as on its way out
    app.stop.clear()
    queue_texts(app, rounds=1)
    assert sender.run_once() == 8
    assert all([m["text"] for m in telegram.messages_to(1000 + user)] == ["0", "0"] for user in range(8))


def lanes_started_by_two_rounds_at_once(stop: threading.Event) -> int:
    """How many lanes a pool of 4 has once two threads have each given it a batch at the same time."""
    before = lanes()
    release, taken = threading.Event(), []
    pool = Lanes(4, stop, lambda batch: taken.append(batch) or release.wait(5), on_exit=lambda: None)
    together = threading.Barrier(2)

    def one_round():
        together.wait()
        pool.run([[]])

    rounds = [threading.Thread(target=one_round) for _ in range(2)]
    for thread in rounds:
        thread.start()
    wait_for(lambda: len(taken) == 2)  # both rounds have started lanes and queued their batch
    started = len(lanes() - before)
    release.set()
    for thread in rounds:
        thread.join(5)
    pool.close(5)
    return started


def test_lanes_started_from_two_threads_at_once_are_as_many_as_asked(app):
    assert [lanes_started_by_two_rounds_at_once(app.stop) for _ in range(5)] == [4] * 5


def test_the_sender_reads_the_apps_database_when_it_uses_it(app, make_app, tmp_path, telegram):
    sender = Sender(app, lanes=4)
    app.db = make_app(DATABASE_PATH=str(tmp_path / "other.db")).db  # as tests replace it
    closed = []
    close = app.db.close
    app.db.close = lambda: closed.append(threading.current_thread()) or close()
    queue_texts(app, rounds=1)
    assert sender.run_once() == 8
    app.stop.set()
    wait_for(lambda: len(closed) == 4)  # each lane closes its connection to the database in use
    assert all(thread.name == "sender-lane" for thread in closed)
