"""Signs of life from the background workers, and what `/health` and `check` make of them.

Each worker beats once per turn of its loop (`App.heartbeat(name)`). In its own
process a worker is reported when its thread has ended, or when it has been
silent for longer than its bound (`silence_bounds`): generous on purpose, since
a false alarm at night costs more than a stuck worker found a few minutes late.

The processes that run the workers also write a beat to the database's `state`
table (`heartbeat:<name>`, at most every SHARE_EVERY seconds), so that the
webhook server of the split setup, which serves `/health` without any worker of
its own, and `check` see a bot process that hangs or was killed. A clean stop
deletes them: a bot stopped on purpose is not reported.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from config import Config
from db import Database

log = logging.getLogger("clubbot.health")

KEY_PREFIX = "heartbeat:"
# Seconds between two database writes of one worker's beat: a write is cheap, but the
# sender beats every second and that is no reason to write every second.
SHARE_EVERY = 10.0
# Added to a bound for beats read from the database: a row is rewritten only every
# SHARE_EVERY seconds, and one write may wait out a busy database (5 s) and the write lock.
SHARED_MARGIN = 30


def silence_bounds(config: Config) -> dict[str, int]:
    """The longest silence, in seconds, that is still normal for each worker (by thread name)."""
    return {
        # Waits at most 1 s between rounds, but a round of up to 200 rows at one message a
        # second per chat, with Telegram's 429 waits and 20 s per hanging call, can take minutes.
        "sender": 600,
        # Its backoff goes up to max(POLL_INTERVAL, 300 s); a pass makes a few Crypto Pay
        # calls of up to 20 s each (5 s connect, 15 s read).
        "poller": max(config.poll_interval, 300) + 120,
        # Every SWEEP_INTERVAL; a pass checks the bot's rights with up to two Bot API calls
        # of up to 20 s per club chat.
        "sweeper": config.sweep_interval + 300,
        # A long poll of 25 s (35 s read timeout), a backoff of up to 60 s while Telegram
        # fails, and the handlers of a batch of updates.
        "updates": 300,
    }


@dataclass(frozen=True)
class SharedBeat:
    """A worker's last beat as a process wrote it to the database."""

    name: str
    age: int  # seconds since it was written, by the wall clock
    bound: int
    pid: int | None

    @property
    def late(self) -> bool:
        return self.age > self.bound + SHARED_MARGIN

    def text(self) -> str:
        where = f"process {self.pid}" if self.pid is not None else "another process"
        if self.late:
            return f"{self.name}: no sign of life for {self.age} s ({where})"
        return f"{self.name}: a sign of life {max(self.age, 0)} s ago ({where})"


def read_shared(db: Database, wall_now: float) -> list[SharedBeat]:
    """The beats written to the database, by name; one small read (raises sqlite3.Error)."""
    beats = []
    for key, value in sorted(db.states(KEY_PREFIX).items()):
        try:
            data = json.loads(value)
            beats.append(SharedBeat(key[len(KEY_PREFIX):], int(wall_now - data["at"]), int(data["bound"]),
                                    data.get("pid")))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # not a row this code wrote; nothing it could say about a worker
    return beats


@dataclass
class _Worker:
    bound: float | None = None  # None until registered: beats alone are not watched
    thread: threading.Thread | None = None
    last_beat: float = 0.0  # monotonic
    shared_at: float | None = None  # monotonic, the last write attempt
    shared_value: str | None = None  # what this process last wrote, to delete at stop


class Heartbeats:
    """The registry of one process's workers: their beats, threads and bounds.

    In-process silence is measured on the monotonic clock (a wall clock step must not
    raise an alarm); beats shared with other processes carry wall-clock time.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 pid: int | None = None):
        self._monotonic, self._wall = monotonic, wall
        self.pid = os.getpid() if pid is None else pid
        self._workers: dict[str, _Worker] = {}
        self._db: Database | None = None
        # Held while writing or deleting rows, so that a worker left running at stop
        # cannot write its row again after forget() deleted it.
        self._share_lock = threading.Lock()

    def share(self, db: Database) -> None:
        """From now on, also write the registered workers' beats to `db` (the bot processes).
        Workers registered before (threads that start their own, like the update handlers)
        are written at once, not a SHARE_EVERY later."""
        self._db = db
        now = self._monotonic()
        for name, worker in list(self._workers.items()):
            if worker.bound is not None and worker.shared_value is None:
                self._share(name, worker, now)

    def register(self, name: str, bound: float, thread: threading.Thread | None = None) -> None:
        """Watch a worker: reported when `thread` has ended or no beat came for `bound` seconds.

        Registering counts as a beat (the worker has just started), and is shared at once,
        so that `check` sees a worker whose loop waits long before its first turn.
        """
        worker = self._workers.setdefault(name, _Worker())
        worker.bound, worker.thread = bound, thread
        now = self._monotonic()
        worker.last_beat = now
        self._share(name, worker, now)

    def beat(self, name: str) -> None:
        """A sign of life from a worker's loop; cheap, and never raises into the loop."""
        now = self._monotonic()
        worker = self._workers.get(name) or self._workers.setdefault(name, _Worker())
        worker.last_beat = now
        if (self._db is not None and worker.bound is not None
                and (worker.shared_at is None or now - worker.shared_at >= SHARE_EVERY)):
            self._share(name, worker, now)

    def _share(self, name: str, worker: _Worker, now: float) -> None:
        # Set first: a failing database is tried again after SHARE_EVERY, not on every beat.
        worker.shared_at = now
        value = json.dumps({"at": int(self._wall()), "bound": int(worker.bound), "pid": self.pid})
        with self._share_lock:
            if self._db is None:
                return
            try:
                self._db.put_state(KEY_PREFIX + name, value)
            except sqlite3.Error as exc:
                log.warning("%s: sign of life not written to the database: %s", name, exc)
                return
            worker.shared_value = value

    def forget(self) -> None:
        """At a clean stop: write no more, and delete this process's rows (not a successor's)."""
        with self._share_lock:
            db, self._db = self._db, None
            if db is None:
                return
            for name, worker in list(self._workers.items()):
                if worker.shared_value is None:
                    continue
                try:
                    db.delete_state(KEY_PREFIX + name, worker.shared_value)
                except sqlite3.Error as exc:
                    log.warning("%s: sign of life not deleted from the database: %s", name, exc)

    def problems(self, db: Database, stopping: bool = False) -> list[str]:
        """What is wrong, one text per worker ("sender: stopped"); empty when all is well.

        Reads the beats of other processes with one query, which also shows the database
        answers (raises sqlite3.Error when it does not). While `stopping`, workers that
        ended are not reported: they were asked to.
        """
        shared = read_shared(db, self._wall())
        found = []
        now = self._monotonic()
        watched = {name: worker for name, worker in self._workers.items() if worker.bound is not None}
        for name, worker in sorted(watched.items()):
            if worker.thread is not None and not worker.thread.is_alive():
                if not stopping:
                    found.append(f"{name}: stopped")
                continue
            silent = now - worker.last_beat
            if silent > worker.bound:
                found.append(f"{name}: no sign of life for {silent:.0f} s")
        # A worker watched here is known better here than from its own row.
        found.extend(beat.text() for beat in shared if beat.late and beat.name not in watched)
        return found
