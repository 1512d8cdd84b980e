"""README's Quick start, walked as written: its commands, taken from README.md itself so that
they cannot drift, run in a copy of the project against the fake Telegram and Crypto Pay. The
wizard is answered at a real terminal (a pseudo-terminal) as README's transcript shows, and
must print that transcript; then ClubBot, with no domain and no webhook, sells a plan."""
from __future__ import annotations

import os
import pty
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from builders import bot_status, buttons, callback_query, message, person
from conftest import CLUB_CHAT, ROOT, free_port, start_process, wait_for
from fakes import FakeCryptoPay, FakeTelegram

# Tokens shaped like real ones, so that the transcript shows them masked as a reader's would be.
BOT_TOKEN = "7012345678:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"
PAY_TOKEN = "28734:AAzQcZWQqQAbsfgPnOLr4FHC8Doa4L7KryC"
OWNER = person(123456789, "en", "Alice", "alice")
CLUB_TITLE = "Alice's Club"
# What the transcript shows in place of this run's own folder and fake API (and, below, in place
# of the admin link's one-time code: the transcript's own).
FOLDER_SHOWN = "/home/you/clubbot"
CRYPTO_PAY_SHOWN = "https://pay.crypt.bot/api"
# Lines of the block that the test does itself: the clone is a copy of this tree, and the
# virtualenv is the one running the tests.
DONE_HERE = ("git clone ", "cd clubbot", "python3 -m venv ", ".venv/bin/pip install ")
LEFT_OUT = shutil.ignore_patterns(".git", ".venv", ".env", "data", "logs", "__pycache__", ".pytest_cache",
                                  ".hypothesis", ".ruff_cache")


def quick_start() -> str:
    """The Quick start section of README.md, up to the next heading outside a code block."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## Quick start"))
    section, fenced = [], False
    for line in lines[start + 1:]:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            break
        section.append(line)
    return "\n".join(section)


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def commands(text: str) -> list[list[str]]:
    """The commands of the section's `sh` blocks, in order: lines joined where they end in a
    backslash, split at `&&`; those this test does itself left out; `.venv/bin/python` made
    this interpreter."""
    found = []
    for block in blocks(text, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.split("#")[0].strip()
                if part and not part.startswith(DONE_HERE):
                    words = shlex.split(part)
                    assert words[0] in (".venv/bin/python", "python"), f"a command this test cannot run: {part}"
                    found.append([sys.executable, *words[1:]])
    return found


class Terminal:
    """A program at a pseudo-terminal, as at the owner's: what it shows (typed answers echoed,
    passwords not), read as it comes."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path):
        master, slave = pty.openpty()
        # A session of its own: the terminal it reads is this one, never the one running pytest.
        self.process = subprocess.Popen(args, cwd=cwd, env={"PATH": os.environ.get("PATH", ""), **env},
                                        stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        self.master = master
        self.shown = ""
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the program ended and closed its side
                return
            if not chunk:
                return
            with self.lock:
                self.shown += chunk.decode("utf-8", "replace").replace("\r\n", "\n")

    @property
    def text(self) -> str:
        with self.lock:
            return self.shown

    def type(self, answer: str) -> None:
        os.write(self.master, answer.encode() + b"\r")

    def close(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.reader.join(5)
        os.close(self.master)
        return self.text


def start_code(text: str) -> str:
    """The one-time code of the link that makes its opener the first admin ("" if none is shown)."""
    found = re.search(r"\?start=([\w-]+)", text)
    return found.group(1) if found else ""


class Answers:
    """What the transcript types at each prompt the wizard shows: the text after that prompt on
    the transcript's next line that begins with it. Tokens are typed unseen; they are this test's."""

    TOKENS = {"Bot token": BOT_TOKEN, "Crypto Pay API token": PAY_TOKEN}

    def __init__(self, transcript: str):
        self.lines = transcript.splitlines()
        self.next = 0

    def to(self, prompt: str) -> str:
        for index in range(self.next, len(self.lines)):
            if f"{self.lines[index]} ".startswith(prompt):  # an editor may strip the prompt's last space
                self.next = index + 1
                typed = self.lines[index][len(prompt):]
                return next((token for question, token in self.TOKENS.items() if prompt.startswith(question)),
                            typed)
        raise AssertionError(f"the wizard asks {prompt!r}, and README's transcript does not, there")


def run_wizard(args: list[str], env: dict[str, str], cwd: Path, telegram: FakeTelegram,
               answers: Answers) -> tuple[int, str]:
    """The wizard at a terminal: each prompt answered as the transcript shows, /start sent and
    the bot made an admin of the club while it waits for them; its exit code and its screen."""
    terminal = Terminal(args, env, cwd)
    answered, started, added, before = 0, False, False, ""
    deadline = time.monotonic() + 60
    try:
        while terminal.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
            shown = terminal.text
            still, before = shown == before, shown  # nothing more came in 20 ms
            if not started and "Waiting for /start" in shown:
                # The owner opens the link the wizard shows: t.me/BOT?start=CODE sends "/start CODE".
                telegram.push_update(message(f"/start {start_code(shown)}".strip(), sender=OWNER))
                started = True
            if not added and "to be made an administrator of a chat" in shown:
                telegram.push_update(bot_status(CLUB_CHAT, CLUB_TITLE, "channel", by=OWNER["id"]))
                added = True
            prompt = shown[answered:].rsplit("\n", 1)[-1]
            if still and len(shown) > answered and prompt.endswith(": "):  # a prompt, waiting for its answer
                answered = len(shown)
                terminal.type(answers.to(prompt))
        stuck = terminal.process.poll() is None
    finally:
        screen = terminal.close()
    assert not stuck, "the wizard did not finish within 60 s; its screen:\n" + screen
    return terminal.process.returncode, screen


@pytest.fixture
def project(tmp_path) -> Path:
    """The clone: this tree as it is, without the virtualenv, the local .env, data and logs."""
    folder = tmp_path / "clubbot"
    shutil.copytree(ROOT, folder, ignore=LEFT_OUT)
    return folder


def test_the_quick_start_as_written_sells_a_plan_without_a_webhook(project):
    section = quick_start()
    [transcript] = blocks(section, "text")
    steps = commands(section)
    assert [step[1:3] for step in steps] == [["clubbot.py", "setup"], ["clubbot.py", "run"]], steps
    telegram, cryptopay = FakeTelegram(BOT_TOKEN), FakeCryptoPay(PAY_TOKEN)
    telegram.chat_titles[CLUB_CHAT] = CLUB_TITLE
    # Only the APIs' addresses (pointed at the fakes, as at a local Bot API server) and a free port
    # come from the environment; everything else is what the wizard writes.
    env = {"TELEGRAM_API_URL": telegram.url, "CRYPTO_PAY_API_URL": cryptopay.api_url,
           "WEBHOOK_PORT": str(free_port())}
    process = None
    try:
        code, screen = run_wizard(steps[0], env, project, telegram, Answers(transcript))
        shown = screen.replace(str(project), FOLDER_SHOWN).replace(cryptopay.api_url, CRYPTO_PAY_SHOWN)
        if start_code(screen):  # a new one each run: shown as the transcript's
            shown = shown.replace(start_code(screen), start_code(transcript))
        assert code == 0, screen  # README runs `run` after it with &&
        assert lines(shown) == lines(transcript), "README's transcript differs from the wizard's screen:\n" + shown
        assert BOT_TOKEN not in screen and PAY_TOKEN not in screen
        assert (project / ".env").stat().st_mode & 0o777 == 0o600

        process = start_process(steps[1][1:], env, project)
        telegram.push_update(message("/start"))  # a member
        wait_for(lambda: telegram.messages_to(501), timeout=15)
        telegram.push_update(callback_query("plan:month"))
        wait_for(lambda: cryptopay.called("createInvoice"))
        cryptopay.pay(1001)  # paid in @CryptoBot; no webhook comes
        [activated] = wait_for(lambda: [m for m in telegram.messages_to(501) if "active until" in m["text"]],
                               timeout=15)
        assert any(button.get("url", "").startswith("https://t.me/+") for button in buttons(activated))
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=15)
        assert process.returncode == 0, err
    finally:
        if process is not None and process.poll() is None:
            process.kill()
        telegram.close()
        cryptopay.close()
