"""Files with member data: owner-only modes, and exports and backups that never overwrite
the live database, a file that is not theirs, or anything behind a planted symlink."""
import csv
import errno
import hashlib
import io
import logging
import os
import sqlite3
import stat

import pytest

import clubbot
from files import SQLITE_SIGNATURE, OutputError, write_output
from runtime import LogHandler, build_app, setup_logging


@pytest.fixture
def cli(env, monkeypatch, tmp_path, capsys):
    """Run `clubbot.main([...])` in this process with the test environment; (code, stdout, stderr)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)  # no .env here
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def run(*args: str) -> tuple[int, str, str]:
        code = clubbot.main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def member(app):
    app.db.upsert_member(501, "alice", "Alice", "en", app.now())
    return app


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refused(result: tuple[int, str, str]) -> str:
    """The one line a refused command prints; no traceback, exit 1."""
    code, _, err = result
    assert code == 1, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


# --- the live database is never a target ---

def test_export_onto_the_live_database_is_refused_and_the_database_is_unchanged(cli, member):
    database = member.db.path
    before = digest(database)
    err = refused(cli("export", str(database)))
    assert "is the live database" in err
    assert digest(database) == before
    assert sqlite3.connect(database).execute("SELECT username FROM members").fetchall() == [("alice",)]
    assert leftovers(database.parent) == []


@pytest.mark.parametrize("link", [os.symlink, os.link], ids=["symlink", "hard link"])
def test_export_onto_the_database_by_another_name_is_refused(cli, member, tmp_path, link):
    name = tmp_path / "members.csv"
    link(member.db.path, name)
    before = digest(member.db.path)
    err = refused(cli("export", str(name)))
    assert "is the live database" in err
    assert digest(member.db.path) == before
    assert name.is_symlink() == (link is os.symlink)


@pytest.mark.parametrize("command", ["export", "backup"])
@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_the_databases_companion_files_are_refused_as_targets(cli, member, command, suffix):
    err = refused(cli(command, f"{member.db.path}{suffix}"))
    assert "is the live database" in err


# --- planted symlinks ---

@pytest.fixture
def victim(tmp_path):
    """A file someone would like ClubBot to overwrite through a planted symlink."""
    path = tmp_path / "victim.txt"
    path.write_text("keep me\n")
    return path


def test_a_planted_partial_symlink_is_replaced_not_written_through(cli, member, tmp_path, victim):
    (tmp_path / "x.csv.partial").symlink_to(victim)
    code, _, err = cli("export", str(tmp_path / "x.csv"))
    assert code == 0, err
    assert victim.read_text() == "keep me\n"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "x.csv").read_text())))
    assert [row["username"] for row in rows] == ["alice"]
    assert not (tmp_path / "x.csv").is_symlink()
    assert leftovers(tmp_path) == []


def test_a_planted_journal_symlink_beside_the_partial_backup_is_not_followed(cli, member, tmp_path, victim):
    (tmp_path / "copy.db.partial-journal").symlink_to(victim)
    code, _, err = cli("backup", str(tmp_path / "copy.db"))
    assert code == 0, err
    assert victim.read_text() == "keep me\n"
    assert leftovers(tmp_path) == []


# --- mistakes are one line, and leave nothing behind ---

def test_export_to_a_missing_folder_is_one_line_and_creates_nothing(cli, member, tmp_path):
    target = tmp_path / "missing" / "dir" / "x.csv"
    err = refused(cli("export", str(target)))
    assert f"the folder {tmp_path / 'missing' / 'dir'} does not exist" in err
    assert not (tmp_path / "missing").exists()
    assert leftovers(tmp_path) == []


def test_backup_to_an_existing_folder_is_one_line_and_leaves_no_partial(cli, member, tmp_path):
    folder = tmp_path / "backups"
    folder.mkdir()
    err = refused(cli("backup", str(folder)))
    assert "is a folder" in err
    assert list(folder.iterdir()) == [] and leftovers(tmp_path) == []


def test_a_target_that_is_not_a_regular_file_is_refused(cli, member, tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    err = refused(cli("export", str(fifo)))
    assert "not a regular file" in err


def test_a_failed_write_leaves_no_partial_and_the_earlier_output_as_it_was(tmp_path):
    target, database = tmp_path / "x.csv", tmp_path / "clubbot.db"
    target.write_text("earlier\n")

    def write(fd: int, _partial) -> None:
        os.write(fd, b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OutputError, match="export to .* failed: No space left on device"):
        write_output(target, database, "export", b"earlier", write)
    assert target.read_text() == "earlier\n" and leftovers(tmp_path) == []


def test_a_target_whose_partial_file_would_be_the_database_is_refused(tmp_path):
    database = tmp_path / "x.csv.partial"
    sqlite3.connect(database).close()
    with pytest.raises(OutputError, match="would be the database"):
        write_output(tmp_path / "x.csv", database, "export", b"", lambda fd, partial: None)
    assert database.exists() and not (tmp_path / "x.csv").exists()


# --- only an earlier output of the same command is replaced ---

def test_export_over_an_earlier_export_works(cli, member, tmp_path):
    target = tmp_path / "members.csv"
    assert cli("export", str(target))[0] == 0
    member.db.upsert_member(502, "bob", "Bob", "en", member.now())
    code, _, err = cli("export", str(target))
    assert code == 0, err
    assert "2 rows written" in err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("command", ["export", "backup"])
def test_a_file_that_is_not_an_earlier_output_is_refused_and_kept(cli, member, tmp_path, command):
    target = tmp_path / ".env"
    target.write_text("BOT_TOKEN=keep-me\n")
    err = refused(cli(command, str(target)))
    assert f"is not an earlier {command}" in err
    assert target.read_text() == "BOT_TOKEN=keep-me\n"
    assert leftovers(tmp_path) == []


def test_export_over_a_backup_and_backup_over_an_export_are_refused(cli, member, tmp_path):
    assert cli("export", str(tmp_path / "a.csv"))[0] == 0
    assert cli("backup", str(tmp_path / "a.db"))[0] == 0
    assert "is not an earlier backup" in refused(cli("backup", str(tmp_path / "a.csv")))
    assert "is not an earlier export" in refused(cli("export", str(tmp_path / "a.db")))


def test_backup_over_an_earlier_backup_works_and_is_a_valid_database(cli, member, tmp_path):
    target = tmp_path / "copy.db"
    assert cli("backup", str(target))[0] == 0
    member.db.upsert_member(502, "bob", "Bob", "en", member.now())
    code, _, err = cli("backup", str(target))
    assert code == 0, err
    assert target.read_bytes().startswith(SQLITE_SIGNATURE)
    copy = sqlite3.connect(target)
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert copy.execute("SELECT count(*) FROM members").fetchone() == (2,)
    assert leftovers(tmp_path) == []


# --- modes: owner only, whatever the umask ---

def test_a_new_database_is_0600_in_a_0700_folder_and_its_wal_too(make_config, tmp_path, umask_022):
    path = tmp_path / "new" / "deeper" / "clubbot.db"
    app = build_app(make_config(DATABASE_PATH=str(path)))
    try:
        app.db.upsert_member(501, "alice", "Alice", "en", app.now())
        assert mode(path) == 0o600
        assert mode(f"{path}-wal") == 0o600 and mode(f"{path}-shm") == 0o600
        assert mode(tmp_path / "new") == 0o700 and mode(tmp_path / "new" / "deeper") == 0o700
    finally:
        app.db.close()


def test_existing_folders_and_database_keep_their_modes(make_config, tmp_path, umask_022):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    path = folder / "clubbot.db"
    sqlite3.connect(path).close()
    path.chmod(0o640)
    app = build_app(make_config(DATABASE_PATH=str(path)))
    app.db.close()
    assert mode(folder) == 0o755 and mode(path) == 0o640


def test_the_log_file_is_0600_in_a_0700_folder_and_rotated_ones_stay_so(make_config, tmp_path, umask_022):
    path = tmp_path / "newlogs" / "clubbot.log"
    cfg = make_config(LOG_FILE=str(path))
    setup_logging(cfg, stream=io.StringIO())
    try:
        logging.getLogger("clubbot.test").warning("a line")
    finally:
        setup_logging(cfg, stream=io.StringIO(), to_file=False)
        logging.getLogger().handlers.clear()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    handler = LogHandler(path, io.StringIO(), max_bytes=200, backups=2)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for n in range(20):
        handler.emit(logging.LogRecord("t", logging.WARNING, __file__, 1, "line %03d " + "x" * 40, (n,), None))
    handler.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["clubbot.log", "clubbot.log.1", "clubbot.log.2"]
    assert all(mode(p) == 0o600 for p in path.parent.iterdir())


def test_exports_and_backups_are_0600(cli, member, tmp_path, umask_022):
    old = tmp_path / "old.csv"
    assert cli("export", str(old))[0] == 0
    old.chmod(0o644)  # from before ClubBot made them private: replaced by a private one
    for command, name in (("export", "new.csv"), ("export", "old.csv"), ("backup", "copy.db")):
        code, _, err = cli(command, str(tmp_path / name))
        assert code == 0, err
        assert mode(tmp_path / name) == 0o600, name


def test_backup_over_another_database_in_use_is_refused(cli, member, tmp_path):
    other = tmp_path / "testnet.db"  # another club's, or the other network's, live database
    conn = sqlite3.connect(other)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    before = digest(other)
    code, out, err = cli("backup", str(other))
    assert code == 1 and "is a database in use" in out + err
    assert digest(other) == before
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    conn.close()
