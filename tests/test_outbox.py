"""The outbox engine's lanes: a few daemon threads, started once, that end when the app stops."""
import threading

from conftest import wait_for

from outbox import Sender


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


def test_the_sender_loop_ends_its_lanes_when_it_stops(app, telegram):
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
