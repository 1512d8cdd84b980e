"""The command line as a newcomer meets it: an old Python, the help and version, an owner's tool
run from the wrong folder, and errors as one plain line."""
import ast
import runpy
import subprocess
import sys

import pytest
from conftest import ROOT, start_process
from test_admin import run_cli

import clubbot
import webhook_server

ENTRY_POINTS = ("clubbot.py", "webhook_server.py")
OLD_PYTHON = (3, 10, 12, "final", 0)
TOO_OLD = "ClubBot needs Python 3.11 or newer; this is 3.10.12 (see README: Deployment)"
OWNER_TOOLS = (["stats"], ["grant", "501", "30d"], ["revoke", "501"], ["export"], ["backup", "copy.db"])


# --- an old Python ---

@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_an_old_python_is_refused_with_one_line_before_any_import_fails(script, monkeypatch):
    monkeypatch.setattr(sys, "version_info", OLD_PYTHON)
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(ROOT / script), run_name="under_an_old_python")
    assert stopped.value.code == TOO_OLD


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_an_old_python_running_the_script_gets_one_line_and_exit_1(script, tmp_path):
    fake = (f"import runpy, sys; sys.version_info = {OLD_PYTHON!r}; sys.argv = [{script!r}, '--help']; "
            f"runpy.run_path({str(ROOT / script)!r}, run_name='__main__')")
    process = subprocess.run([sys.executable, "-c", fake], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert (process.returncode, process.stdout, process.stderr) == (1, "", TOO_OLD + "\n")


@pytest.mark.parametrize("script", ENTRY_POINTS)
def test_the_entry_points_parse_under_python_3_8_so_that_the_check_can_run(script):
    ast.parse((ROOT / script).read_text(encoding="utf-8"), feature_version=(3, 8))


# --- help and version ---

def test_webhook_server_help_names_itself(capsys):
    with pytest.raises(SystemExit) as stopped:
        webhook_server.main(["--help"])
    out = capsys.readouterr().out
    assert stopped.value.code == 0
    assert out.startswith("usage: webhook_server.py [-h] [--version]\n")
    assert "clubbot.py webhook`" in out and "usage: clubbot.py" not in out


@pytest.mark.parametrize("main", [clubbot.main, webhook_server.main])
def test_both_entry_points_tell_their_version(main, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"ClubBot {clubbot.__version__}\n"
    assert clubbot.__version__.count(".") == 2


def test_version_is_the_scripts_own_answer(tmp_path):
    process = start_process([str(ROOT / "webhook_server.py"), "--version"], {}, tmp_path)
    out, err = process.communicate(timeout=30)
    assert (process.returncode, out, err) == (0, f"ClubBot {clubbot.__version__}\n", "")


# --- an owner's tool from the wrong folder ---

def refused(result: tuple[int, str, str]) -> str:
    """What a refused owner's tool printed: nothing on stdout, one line on stderr, exit 1."""
    code, out, err = result
    assert (code, out, err.count("\n")) == (1, "", 1), err
    return err


@pytest.mark.parametrize("args", OWNER_TOOLS, ids=lambda args: args[0])
def test_an_owner_tool_finds_no_database_and_creates_none(env, tmp_path, args):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {name: value for name, value in env.items() if name != "DATABASE_PATH"}  # so data/clubbot.db, here
    err = refused(run_cli(env, elsewhere, *args))
    assert err == (f"error: no database at {elsewhere / 'data' / 'clubbot.db'} (DATABASE_PATH); "
                   f"run ClubBot there first, or cd to its folder\n")
    assert list(elsewhere.iterdir()) == []


def test_check_says_which_database_it_did_not_find(tmp_path, env, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    clubbot.main(["check"])
    database = tmp_path / "data" / "clubbot.db"
    assert f"note  no running bot found (no database yet): DATABASE_PATH is {database}\n" in capsys.readouterr().out
    assert not database.parent.exists()


# --- errors: the owner's tools print one plain line, the services log it ---

def test_an_owner_tools_error_is_a_plain_line_on_stderr(env, app, tmp_path):
    err = refused(run_cli(env, tmp_path, "grant", "@nobody", "30d"))
    assert err.startswith("error: I don't know @nobody")


def test_export_and_backup_to_a_missing_folder_are_one_plain_line(env, app, tmp_path):
    for args in (["export", str(tmp_path / "x" / "y.csv")], ["backup", str(tmp_path / "x" / "y.db")]):
        err = refused(run_cli(env, tmp_path, *args))
        assert err == (f"error: {args[0]}: the folder {tmp_path / 'x'} does not exist; "
                       f"create it first or choose another\n")
    assert not (tmp_path / "x").exists()


def test_the_version_is_the_one_the_changelog_and_the_readmes_name():
    for document in ("CHANGELOG.md", "README.md", "README.ru.md"):
        assert f"ClubBot {clubbot.__version__}" in (ROOT / document).read_text(encoding="utf-8"), document
