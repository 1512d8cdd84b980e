"""README must document every setting and every command."""
import re

from conftest import ROOT

from clubbot import COMMANDS
from config import SETTINGS

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_readme_table():
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.MULTILINE))
    assert documented == set(SETTINGS)


def test_every_command_is_in_the_readme():
    for name in COMMANDS:
        assert f"clubbot.py {name}" in README or (name == "run" and "python clubbot.py`" in README), name


def test_the_readme_test_command_is_the_one_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".venv/bin/pip install -r requirements-dev.txt && .venv/bin/python -m pytest -q" in README
    assert ".venv/bin/python -m pytest -q" in ci and "-r requirements-dev.txt" in ci


def requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_runtime_requirements_hold_no_test_package_and_the_dev_ones_add_them_to_it():
    runtime = requirements("requirements.txt")
    dev = requirements("requirements-dev.txt")
    assert {line.split("==")[0] for line in runtime} == {"pyTelegramBotAPI", "waitress", "requests"}
    assert dev[0] == "-r requirements.txt"
    assert {line.split("==")[0] for line in dev[1:]} == {"pytest", "responses", "hypothesis"}
    assert all("==" in line for line in runtime + dev[1:])  # pinned


def test_the_server_installs_the_runtime_requirements_only():
    for readme in (README, (ROOT / "README.ru.md").read_text(encoding="utf-8")):
        installs = re.findall(r"pip install (?:-q )?-r (\S+)", readme)
        assert installs.count("requirements-dev.txt") == 1, installs  # the tests' command alone
        assert "/opt/clubbot/requirements.txt" in installs


def test_the_example_env_names_only_real_settings():
    names = re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert names and set(names) <= set(SETTINGS)


def test_the_russian_readme_documents_the_same_settings_commands_and_code():
    russian = (ROOT / "README.ru.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", russian, flags=re.MULTILINE))
    assert documented == set(SETTINGS)
    for name in COMMANDS:
        assert f"clubbot.py {name}" in russian or name == "run", name
    assert re.findall(r"```.*?```", README, flags=re.S) == re.findall(r"```.*?```", russian, flags=re.S)
    assert russian.startswith("[English](README.md)")
