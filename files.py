"""Files with member data (the database, logs, exports, backups): readable by the owner only.

Modes given to open() and mkdir() are narrowed by the umask but never widened
back, so files are created 0600 and folders 0700 and then set to exactly that
with fchmod/chmod, whatever the umask. Files and folders that already exist
keep their modes: the owner may have chosen them.

The owner's tools write their output next to it as `FILE.partial` and rename
it into place, never over the live database, never over a file that is not an
earlier output of the same tool (a typo must not replace `.env`), and never
through a symlink someone planted where the partial file goes.
"""
from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700
# sqlite keeps these beside a database; each is the database as much as the file itself.
DATABASE_COMPANIONS = ("", "-wal", "-shm", "-journal")
SQLITE_SIGNATURE = b"SQLite format 3\x00"
HEAD_BYTES = 4096

T = TypeVar("T")


class OutputError(Exception):
    """An output file refused or not written; one line the owner can act on."""


def make_private_folders(folder: Path) -> None:
    """Create `folder` and its missing parents 0700; existing ones are left as they are."""
    missing: list[Path] = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_FOLDER)
        except FileExistsError:
            continue  # made meanwhile by the other process of the split setup: its mode stands
        path.chmod(PRIVATE_FOLDER)


def open_private(path: Path, flags: int) -> int:
    """Open `path` (a file descriptor), creating it 0600 if it does not exist."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError:
        os.close(fd)
        raise
    return fd


def create_private_file(path: Path) -> None:
    """Make sure `path` exists; if it is created here, it is empty and 0600."""
    os.close(open_private(path, os.O_WRONLY))


def write_output(target: Path, database: Path, what: str, signature: bytes,
                 write: Callable[[int, Path], T]) -> T:
    """Write `target` through `write(fd, partial_path)` and rename it into place; return what write returns.

    `signature` is how an earlier output of the same command begins: only such a
    file is replaced. `what` names the command in messages. Raises OutputError.
    """
    check_target(target, database, what, signature)
    partial = target.with_name(target.name + ".partial")
    if _names_database(partial, database):
        raise OutputError(f"{what}: {partial}, the temporary file beside {target}, would be the database; "
                          f"choose another name")
    fd = _create_partial(partial, what)
    try:
        created = os.fstat(fd)
        result = write(fd, partial)
        os.fsync(fd)
        _still_ours(partial, created, what)
        os.replace(partial, target)
        return result
    except BaseException as exc:
        _remove(partial)
        if isinstance(exc, (OSError, sqlite3.Error)):
            raise OutputError(f"{what} to {target} failed: {_reason(exc)}") from None
        raise
    finally:
        os.close(fd)


def check_target(target: Path, database: Path, what: str, signature: bytes) -> None:
    """Refuse a target that is the database, not a regular file, in a missing folder,
    or an existing file that does not begin with `signature`."""
    if _is_database(target, database):
        raise OutputError(f"{what}: {target} is the live database; choose another file")
    folder = Path(os.path.abspath(target)).parent
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise OutputError(f"{what}: the folder {folder} {state}; create it first or choose another")
    try:
        info = os.stat(target)
    except FileNotFoundError:
        return  # nothing there, or a dangling symlink: the rename replaces the link itself
    except OSError as exc:
        raise OutputError(f"{what}: cannot check {target}: {_reason(exc)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"{what}: {target} is a folder; give a file name")
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"{what}: {target} is not a regular file; choose another")
    if not _read_head(target, what).startswith(signature):
        raise OutputError(f"{what}: {target} exists and is not an earlier {what}; "
                          f"it is left as it is, choose another file")
    live = [f"{target}{suffix}" for suffix in ("-wal", "-shm") if os.path.exists(f"{target}{suffix}")]
    if live:
        # Another database in use (another club, the other network's): not a copy to replace.
        raise OutputError(f"{what}: {target} is a database in use ({live[0]} beside it); choose another file")


def _is_database(path: Path, database: Path) -> bool:
    """Whether `path` names the database or a companion file, through symlinks and hard links."""
    for suffix in DATABASE_COMPANIONS:
        companion = Path(f"{database}{suffix}")
        try:
            if os.path.samefile(path, companion):
                return True
        except OSError:
            pass  # one of them does not exist: compare where the names lead
        if _resolved(path) == _resolved(companion):
            return True
    return False


def _names_database(path: Path, database: Path) -> bool:
    """Whether unlinking `path` would unlink the database or a companion (a link elsewhere may go)."""
    entry = _entry(path)
    for suffix in DATABASE_COMPANIONS:
        companion = Path(f"{database}{suffix}")
        if entry in (_entry(companion), _entry(_resolved(companion))):
            return True
    return False


def _entry(path: Path) -> tuple[Path, str]:
    """A directory entry: its folder with symlinks resolved, and its own name as it is."""
    absolute = Path(os.path.abspath(path))
    return _resolved(absolute.parent), absolute.name


def _resolved(path: Path) -> Path:
    """Where a name leads; a symlink loop leads nowhere else."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a loop, before Python 3.13
        return Path(os.path.abspath(path))


def _read_head(path: Path, what: str) -> bytes:
    try:
        # O_NONBLOCK: should a FIFO appear there after the check above, opening it must not hang.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return os.read(fd, HEAD_BYTES)
        finally:
            os.close(fd)
    except OSError as exc:
        raise OutputError(f"{what}: cannot read {path}: {_reason(exc)}") from None


def _create_partial(partial: Path, what: str) -> int:
    """A new 0600 file at `partial`; whatever was there, a symlink included, is unlinked, never followed."""
    try:
        _remove(partial, strict=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     PRIVATE_FILE)
    except OSError as exc:
        raise OutputError(f"{what}: cannot create {partial}: {_reason(exc)}") from None
    try:
        os.fchmod(fd, PRIVATE_FILE)
    except OSError as exc:
        os.close(fd)
        _remove(partial)
        raise OutputError(f"{what}: cannot create {partial}: {_reason(exc)}") from None
    return fd


def _still_ours(partial: Path, created: os.stat_result, what: str) -> None:
    """The file written by name (sqlite opens it by name) is the one created above, not a swapped-in link."""
    now = os.lstat(partial)
    if (now.st_dev, now.st_ino) != (created.st_dev, created.st_ino):
        raise OutputError(f"{what}: {partial} was replaced by something else while being written")


def _remove(path: Path, strict: bool = False) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        if strict:
            raise


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
